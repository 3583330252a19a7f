"""Transfer learning with tf-keras: phases, checkpoints, BatchNorm handling (imports TensorFlow lazily)."""
