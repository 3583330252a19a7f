from edgeft.cli import main

main()
