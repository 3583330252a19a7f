"""Edge TPU: compile the full-integer TFLite model, or predict whether it would compile.

With ``edgetpu_compiler`` on PATH the int8 model is compiled to ``model_int8_edgetpu.tflite``;
its log is kept (``model_int8_edgetpu.log``) and parsed for the operations mapped to the Edge
TPU and those left on the CPU. Without it (Coral publishes the compiler for x86-64 Linux only,
and not on PyPI), ``model_int8_edgetpu.compatibility.json`` is written instead: full-integer or
not, static shapes, a single subgraph, each operator checked against the Edge TPU's supported
operations, and a predicted verdict. No accuracy is measured without the device.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from edgeft.errors import ExportError
from edgeft.export.spec import Format, IODtype, Precision
from edgeft.export.formats import ConversionJob, Exporter, register
from edgeft.export.formats.tflite import FILENAMES as TFLITE_FILENAMES

COMPILED_FILE = "model_int8_edgetpu.tflite"
INT8_TFLITE = TFLITE_FILENAMES[Precision.INT8]  # the full-integer model it compiles, when already exported
REPORT_FILE = "model_int8_edgetpu.compatibility.json"
LOG_FILE = "model_int8_edgetpu.log"

# https://coral.ai/docs/edgetpu/models-intro/#supported-operations (builtin operator names)
EDGETPU_SUPPORTED_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "EXPAND_DIMS",
    "FULLY_CONNECTED", "GATHER", "HARD_SWISH", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D",
    "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PADV2", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU",
    "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH",
    "TRANSPOSE", "TRANSPOSE_CONV",
})
_INTEGER_TYPES = {"INT8", "UINT8", "INT32", "INT16", "INT64"}

VERDICT_NOT_QUANTIZED = "not quantized"
VERDICT_DYNAMIC = "dynamic shapes"
VERDICT_FULL = "fully mapped to the Edge TPU"
VERDICT_PARTIAL = "partially mapped (operations from the first unsupported one run on the CPU)"


def _type_names() -> dict[int, str]:
    from tensorflow.lite.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def _op_names() -> dict[int, str]:
    from tensorflow.lite.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def analyze_tflite(model_bytes: bytes) -> dict[str, Any]:
    """Predict Edge TPU compatibility from a ``.tflite`` flatbuffer (no compiler needed)."""
    from tensorflow.lite.python import schema_py_generated as schema

    types, ops = _type_names(), _op_names()
    model = schema.Model.GetRootAsModel(model_bytes, 0)
    subgraphs = model.SubgraphsLength()
    graph = model.Subgraphs(0)
    tensors = [graph.Tensors(i) for i in range(graph.TensorsLength())]
    graph_inputs = set(graph.InputsAsNumpy().tolist())
    graph_outputs = set(graph.OutputsAsNumpy().tolist())

    def dynamic(tensor: Any) -> bool:
        signature = tensor.ShapeSignatureAsNumpy()
        return not isinstance(signature, int) and bool((signature < 0).any())

    dynamic_tensors = [tensors[i].Name().decode() for i in sorted(graph_inputs | graph_outputs) if dynamic(tensors[i])]
    dynamic_tensors += [t.Name().decode() for t in tensors if dynamic(t) and t.Name().decode() not in dynamic_tensors]
    operators: list[dict[str, Any]] = []
    float_ops: list[str] = []
    first_unsupported: int | None = None
    for index in range(graph.OperatorsLength()):
        op = graph.Operators(index)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = ops.get(builtin, f"OP_{builtin}")
        if name == "CUSTOM":
            name = f"CUSTOM:{code.CustomCode().decode() if code.CustomCode() else '?'}"
        ins = [i for i in op.InputsAsNumpy().tolist() if i >= 0] if op.InputsLength() else []
        outs = op.OutputsAsNumpy().tolist() if op.OutputsLength() else []
        dtypes = [types.get(tensors[i].Type(), "?") for i in ins + outs]
        is_float = any(d not in _INTEGER_TYPES for d in dtypes)
        boundary = (name == "QUANTIZE" and set(ins) <= graph_inputs) or (name == "DEQUANTIZE" and set(outs) <= graph_outputs)
        if is_float and not boundary:
            float_ops.append(name)
        supported = name in EDGETPU_SUPPORTED_OPS and not (is_float and not boundary)
        if not supported and first_unsupported is None:
            first_unsupported = index
        operators.append({"index": index, "op": name, "dtypes": dtypes, "supported": supported})
    full_integer = not float_ops
    if not full_integer:
        verdict = VERDICT_NOT_QUANTIZED
    elif dynamic_tensors:
        verdict = VERDICT_DYNAMIC
    elif first_unsupported is None and subgraphs == 1:
        verdict = VERDICT_FULL
    else:
        verdict = VERDICT_PARTIAL
    mapped = first_unsupported if first_unsupported is not None else len(operators)
    return {
        "compiler": None,
        "verdict": verdict,
        "full_integer": full_integer,
        "float_ops": dict(Counter(float_ops)),
        "static_shapes": not dynamic_tensors,
        "dynamic_tensors": dynamic_tensors[:20],
        "subgraphs": subgraphs,
        "operators_total": len(operators),
        "predicted_ops_on_edgetpu": mapped if full_integer else 0,
        "predicted_ops_on_cpu": len(operators) - (mapped if full_integer else 0),
        "first_unsupported": operators[first_unsupported] if first_unsupported is not None else None,
        "op_counts": dict(Counter(o["op"] for o in operators)),
        "unsupported_ops": sorted({o["op"] for o in operators if not o["supported"]}),
        "supported_ops_source": "https://coral.ai/docs/edgetpu/models-intro/#supported-operations",
    }


_MAPPED = "Mapped to Edge TPU"
_TABLE_ROW = re.compile(r"^([A-Z][A-Z0-9_]*(?::\S+)?)\s+(\d+)\s+(\S.*?)\s*$")


def parse_compiler_log(text: str) -> dict[str, Any]:
    """Parse ``edgetpu_compiler -s`` output: version, memory, and the operations on the TPU and the CPU.

    The compiler prints "Number of operations that will run on Edge TPU/CPU" only when some
    operations stay on the CPU; otherwise the counts come from its operator table.
    """
    def number(pattern: str) -> int | None:
        match = re.search(pattern, text)
        return int(match.group(1)) if match else None

    def value(pattern: str) -> str | None:
        match = re.search(pattern, text)
        return match.group(1).strip() if match else None

    operators = []
    table = text.split("Operator", 1)[1] if re.search(r"^Operator\s+Count\s+Status", text, re.M) else ""
    for line in table.splitlines()[1:]:
        match = _TABLE_ROW.match(line.strip())
        if match:
            operators.append({"op": match.group(1), "count": int(match.group(2)), "status": match.group(3)})
    on_tpu = number(r"Number of operations that will run on Edge TPU:\s*(\d+)")
    on_cpu = number(r"Number of operations that will run on CPU:\s*(\d+)")
    if on_tpu is None and operators:
        on_tpu = sum(o["count"] for o in operators if o["status"] == _MAPPED)
        on_cpu = sum(o["count"] for o in operators if o["status"] != _MAPPED)
    return {
        "compiler_version": value(r"Edge TPU Compiler version\s+(\S+)"),
        "compiled": "Model compiled successfully" in text,
        "not_quantized": "Model not quantized" in text,
        "subgraphs_on_edgetpu": number(r"Number of Edge TPU subgraphs:\s*(\d+)"),
        "operations_total": number(r"Total number of operations:\s*(\d+)"),
        "ops_on_edgetpu": on_tpu,
        "ops_on_cpu": on_cpu,
        "on_chip_memory_used": value(r"On-chip memory used for caching model parameters:\s*(\S+)"),
        "off_chip_memory_used": value(r"Off-chip memory used for streaming uncached model parameters:\s*(\S+)"),
        "operators": operators,
        "cpu_operators": sorted({o["op"] for o in operators if o["status"] != _MAPPED}),
    }


@register
class EdgeTpuExporter(Exporter):
    """Compiles the int8 TFLite model with ``edgetpu_compiler``, or writes a compatibility report.

    Its artifacts run only with an Edge TPU attached: no device backend validates them on the host.
    """

    float_layers_allowed = False  # a float op ends the part of the graph the Edge TPU runs

    format = Format.EDGETPU.value
    precisions = (Precision.INT8,)
    order = 30  # after TFLite int8, which it compiles
    implies = (Precision.INT8,)
    every_precision = True
    size_reference = Format.TFLITE.value

    def filename(self, precision: Precision) -> str:
        return COMPILED_FILE if shutil.which("edgetpu_compiler") else REPORT_FILE

    def job_inputs(self, out_dir: Path) -> dict[str, Any]:
        int8 = Path(out_dir) / INT8_TFLITE
        return {"int8_tflite": str(int8)} if int8.is_file() else {}

    def needs_keras_model(self, job: ConversionJob) -> bool:
        return not (job.int8_tflite and Path(job.int8_tflite).is_file())

    def deployable_size(self, path: Path, result: dict[str, Any]) -> int | None:
        if result.get("compiled"):  # the compiled model is what ships
            return path.stat().st_size
        int8 = path.parent / INT8_TFLITE
        if int8.is_file():
            return int8.stat().st_size
        return result.get("int8_size_bytes")  # the int8 model the report was predicted from (not exported)

    def has_sidecar(self, result: dict[str, Any]) -> bool:
        return bool(result.get("compiled"))  # the compatibility report is JSON itself: no ``.json.json``

    def details(self, result: dict[str, Any]) -> dict[str, Any] | None:
        return result.get("edgetpu")

    def report_notes(self, artifact: dict[str, Any]) -> list[str]:
        details = artifact.get("details") or {}
        compiled = details.get("compiler_report")
        if compiled:
            counts = (f" ({compiled.get('ops_on_edgetpu', '?')} of {compiled.get('operations_total', '?')} ops on the "
                      f"Edge TPU, compiler {compiled.get('compiler_version') or '?'}; log: {details.get('log')})")
        else:
            counts = (f" ({details.get('predicted_ops_on_edgetpu', '?')} of {details.get('operators_total', '?')} ops "
                      "predicted on the Edge TPU)")
        first = details.get("first_unsupported")
        return [f"Edge TPU: **{details.get('verdict', '?')}**"
                + (f"; first unsupported op: {first['op']}" if first and not compiled else "") + counts + "."]

    def convert(self, job: ConversionJob, model: Any) -> dict[str, Any]:
        from edgeft.export.formats.tflite import convert_keras_to_tflite
        from edgeft.fileio import write_bytes_atomic, write_json_atomic, write_text_atomic
        from edgeft.preprocessing import Preprocessing

        work = Path(job.work_dir)
        if job.int8_tflite and Path(job.int8_tflite).is_file():
            int8_path = Path(job.int8_tflite)
        else:
            if model is None:
                raise ExportError("Edge TPU export needs a full-integer int8 TFLite model; none was given")
            int8_path = work / "edgetpu_input_int8.tflite"
            io = IODtype(job.io_dtype) if job.io_dtype != "float32" else IODtype.UINT8
            int8_path.write_bytes(convert_keras_to_tflite(
                model, int(job.metadata["image_size"]), Precision.INT8,
                Preprocessing.from_dict(job.metadata["preprocessing"]), job.calibration, io))
        analysis = analyze_tflite(int8_path.read_bytes())
        output = Path(job.output)
        compiler = shutil.which("edgetpu_compiler")
        if compiler:
            run = subprocess.run([compiler, "-s", "-o", str(work), str(int8_path)], capture_output=True, text=True)
            log = run.stdout + run.stderr
            write_text_atomic(output.parent / LOG_FILE, log)
            parsed = parse_compiler_log(log)
            compiled = work / (int8_path.stem + "_edgetpu.tflite")
            if parsed["not_quantized"]:
                raise ExportError(f"edgetpu_compiler: model not quantized (exit {run.returncode}); the Edge TPU "
                                  f"needs a full-integer model: see {output.parent / LOG_FILE}")
            if run.returncode != 0 or not compiled.is_file():
                last = (log.strip().splitlines() or ["no output"])[-1][:160]
                raise ExportError(f"edgetpu_compiler failed (exit {run.returncode}): {last}; "
                                  f"full log in {output.parent / LOG_FILE}")
            write_bytes_atomic(output, compiled.read_bytes())
            analysis.update(compiler=compiler, compiler_report=parsed, log=LOG_FILE)
            analysis["verdict"] = "compiled" if not parsed["ops_on_cpu"] else \
                f"compiled, {parsed['ops_on_cpu']} of {parsed['operations_total']} operations on the CPU"
        else:
            report = dict(analysis, source_model=int8_path.name,
                          note="edgetpu_compiler is not on PATH: predicted from the int8 model itself")
            write_json_atomic(output, report)
        metadata = dict(job.metadata, edgetpu=analysis)
        return {"metadata": metadata, "edgetpu": analysis, "compiled": bool(compiler),
                "int8_size_bytes": int8_path.stat().st_size}
