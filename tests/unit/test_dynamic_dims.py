"""`lpusim.compile` of a model with dynamic dimensions (runtime/dynamic.py): compiled at `run` for the arrays'
shapes, one program per distinct set of shapes; arrays or shapes that contradict the model are one clear error
naming the input, the dimension, the model's value and the given one."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import lpusim
from lpusim.check.compare import compare, run_onnxruntime
from lpusim.models import mlp
from lpusim.runtime.dynamic import DynamicProgram


def dynamic_mlp():
    model = mlp((16, 8, 4), seed=0)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    return model


def two_inputs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 8])
    g = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "g", [x, y], [z])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_compiled_for_each_set_of_shapes_and_cached():
    model = dynamic_mlp()
    program = lpusim.compile(model)
    assert isinstance(program, DynamicProgram)
    assert program.input_shapes == {"input": ("batch", 16)} and program.dynamic_inputs == ["input"]
    rng = np.random.default_rng(0)
    for batch in (3, 5, 3):
        x = {"input": rng.standard_normal((batch, 16)).astype(np.float32)}
        result = program.run(x)
        assert result.outputs[program.output_names[0]].shape == (batch, 4)
        assert result.cycles == program.last_program.predicted_cycles
        ref, _ = run_onnxruntime(model, x)
        assert compare(result.outputs, ref)["outputs_match"]
    assert program.programs.compiles == 2 and len(program.programs) == 2
    assert program.run(x, timing_only=True).cycles == result.cycles


def test_array_contradicting_a_fixed_dimension_names_input_dimension_and_values():
    program = lpusim.compile(dynamic_mlp())
    with pytest.raises(lpusim.ModelError) as e:
        program.run({"input": np.zeros((3, 17), np.float32)})
    assert str(e.value) == ("input 'input': the array given has shape (3, 17), the model's is ['batch', 16]: "
                            "dimension 1 is 16 in the model, 17 in the array")
    with pytest.raises(lpusim.ModelError, match=r"1 dimension\(s\) in the array, 2 in the model"):
        program.run({"input": np.zeros(16, np.float32)})
    assert program.programs.compiles == 0


def test_a_dimension_name_shared_by_two_inputs_must_agree():
    program = lpusim.compile(two_inputs())
    with pytest.raises(lpusim.ModelError, match=r"input 'y': dimension 0 \('n'\) is 3 in the array, but 'n' is 2 "
                                                r"in input 'x'"):
        program.run({"x": np.zeros((2, 8), np.float32), "y": np.zeros((3, 8), np.float32)})
    out = program.run({"x": np.ones((2, 8), np.float32), "y": np.ones((2, 8), np.float32)}).outputs["z"]
    assert np.array_equal(out, np.full((2, 8), 2.0, np.float32))
    with pytest.raises(lpusim.ModelError, match="input 'y' \\['n', 8\\] has dynamic dimensions and no array"):
        program.run({"x": np.ones((2, 8), np.float32)})


def test_no_arrays_no_shapes_is_the_compilers_error():
    program = lpusim.compile(dynamic_mlp())
    message = "input 'input': dimension 'batch' is not fixed; give it with --shape input=D0,D1,..."
    with pytest.raises(lpusim.CompileError, match=message.replace(".", r"\.")):
        program.run()
    with pytest.raises(lpusim.CompileError, match="dimension 'batch' is not fixed"):
        program.random_inputs(0)


def test_given_shapes_fix_dimensions_and_are_checked_at_compile():
    model = two_inputs()
    with pytest.raises(lpusim.CompileError) as e:
        lpusim.compile(model, shapes={"x": (2, 9)})
    assert str(e.value) == ("input 'x': the shape given [2, 9] contradicts the model's ['n', 8]: dimension 1 is 8 "
                            "in the model, 9 given")
    with pytest.raises(lpusim.CompileError, match="unknown input"):
        lpusim.compile(model, shapes={"w": (2, 8)})
    # every dynamic dimension given: a Program now, as before
    assert isinstance(lpusim.compile(model, shapes={"x": (2, 8), "y": (2, 8)}), lpusim.Program)
    # some given: the rest from the arrays, and the given shape wins over an array's
    program = lpusim.compile(model, shapes={"x": (2, 8)})
    assert isinstance(program, DynamicProgram) and program.dynamic_inputs == ["y"]
    assert program.run({"x": np.ones((2, 8), np.float32), "y": np.ones((2, 8), np.float32)}).outputs["z"].shape == (2, 8)
    with pytest.raises(lpusim.ModelError, match="input 'x' has shape \\(4, 8\\), the program was compiled for \\(2, 8\\)"):
        program.run({"x": np.ones((4, 8), np.float32), "y": np.ones((2, 8), np.float32)})
    with pytest.raises(lpusim.ModelError, match="input 'y': dimension 0 \\('n'\\) is 3 in the array, but 'n' is 2 in "
                                                "input 'x'"):
        program.run({"x": np.ones((2, 8), np.float32), "y": np.ones((3, 8), np.float32)})
