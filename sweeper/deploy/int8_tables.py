"""The reference kernel's own table for an int8 -> int8 elementwise op with no constants
(LOGISTIC): ``reference_table(op_name, source, output)`` builds a one-op flatbuffer with
the op's input and output quantization, runs TensorFlow's reference kernel (BUILTIN_REF)
on all 256 int8 values and returns its 256 outputs, so ``unary_step`` gives the op's int8
outputs exactly without porting its arithmetic (LOGISTIC's is gemmlowp's fixed-point
logistic). A part of ``sweeper.deploy.int8_numpy``; TensorFlow and tflite-micro are
imported inside the function.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TABULATED = ("LOGISTIC",)


def reference_table(op_name: str, source, output) -> np.ndarray:
    """The reference kernel's int8 output for each int8 input -128..127 (source and
    output: tensors with ``scale`` and ``zero_point``)."""
    import tensorflow as tf
    from tflite_micro.tensorflow.lite.micro.compression import model_editor as editor
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    from sweeper.deploy.common import quiet

    def tensor(of, name: str):
        return editor.Tensor(shape=(256,), dtype=schema.TensorType.INT8, name=name,
                             quantization=editor.Quantization(float(of.scale), int(of.zero_point)))

    x, y = tensor(source, "x"), tensor(output, "y")
    op = editor.Operator(opcode=getattr(schema.BuiltinOperator, op_name), inputs=[x], outputs=[y])
    model = editor.Model(subgraphs=[editor.Subgraph(tensors=[x, y], operators=[op], inputs=[x], outputs=[y])])
    with quiet():
        interpreter = tf.lite.Interpreter(model_content=bytes(model.build()), num_threads=1,
                                          experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
        interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.arange(-128, 128, dtype=np.int8))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def unary_step(op, tensors: dict) -> Callable[[dict], None]:
    """The op as a read of its table at input + 128."""
    source, output = tensors[op.inputs[0]], tensors[op.outputs[0]]
    table = reference_table(op.name, source, output)

    def run(values: dict) -> None:
        values[output.index] = table[values[source.index].astype(np.intp) + 128]
    return run
