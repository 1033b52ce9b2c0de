"""A YOLOv8n-like detector built with onnx.helper (no ultralytics, no downloads), random weights: Conv + SiLU,
C2f blocks (Split, bottlenecks with skip Adds, Concat), SPPF (max pools), the upsample/concat neck, and the
detection head with its decode tail (DFL softmax over 16 bins, anchors, strides, class sigmoids) as Ultralytics
exports it. Issue 16's SRAM fragmentation reproducer (tests/unit/test_sram_packing.py)."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def yolo_like(size: int = 320, width: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """YOLOv8n's layer structure at `size` x `size`; `width` scales the backbone and neck channels (1.0: v8n's)."""
    rng = np.random.default_rng(seed)
    nodes, inits, count = [], [], [0]

    def name(kind):
        count[0] += 1
        return f"{kind}{count[0]}"

    def const(array):
        n = name("k")
        inits.append(numpy_helper.from_array(np.asarray(array), n))
        return n

    def node(op, inputs, **attrs):
        out = name(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(x, cin, cout, k=1, stride=1, act=True):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        y = node("Conv", [x, const(w), const(b)], pads=[k // 2] * 4, strides=[stride] * 2, kernel_shape=[k, k])
        return node("Mul", [y, node("Sigmoid", [y])]) if act else y

    def split(x, sizes, axis=1):
        outs = [name("split") for _ in sizes]
        nodes.append(helper.make_node("Split", [x, const(np.array(sizes, np.int64))], outs, name=outs[0],
                                      axis=axis))
        return outs

    def c2f(x, c1, c2, n, shortcut):
        c = c2 // 2
        ys = split(conv(x, c1, 2 * c), [c, c])
        for _ in range(n):
            t = conv(conv(ys[-1], c, c, 3), c, c, 3)
            ys.append(node("Add", [ys[-1], t]) if shortcut else t)
        return conv(node("Concat", ys, axis=1), (2 + n) * c, c2)

    def sppf(x, c1, c2):
        ys = [conv(x, c1, c1 // 2)]
        for _ in range(3):
            ys.append(node("MaxPool", [ys[-1]], kernel_shape=[5, 5], pads=[2] * 4, strides=[1, 1]))
        return conv(node("Concat", ys, axis=1), 2 * c1, c2)

    def up(x):
        return node("Resize", [x, "", const(np.array([1, 1, 2, 2], np.float32))], mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")

    def cat(*xs):
        return node("Concat", list(xs), axis=1)

    ch = lambda n: max(8, int(n * width))  # noqa: E731
    x = conv("images", 3, ch(16), 3, 2)
    x = c2f(conv(x, ch(16), ch(32), 3, 2), ch(32), ch(32), 1, True)
    p3b = c2f(conv(x, ch(32), ch(64), 3, 2), ch(64), ch(64), 2, True)
    p4b = c2f(conv(p3b, ch(64), ch(128), 3, 2), ch(128), ch(128), 2, True)
    x = c2f(conv(p4b, ch(128), ch(256), 3, 2), ch(256), ch(256), 1, True)
    p5b = sppf(x, ch(256), ch(256))
    p4a = c2f(cat(up(p5b), p4b), ch(384), ch(128), 1, False)
    p3 = c2f(cat(up(p4a), p3b), ch(192), ch(64), 1, False)
    p4 = c2f(cat(conv(p3, ch(64), ch(64), 3, 2), p4a), ch(192), ch(128), 1, False)
    p5 = c2f(cat(conv(p4, ch(128), ch(128), 3, 2), p5b), ch(384), ch(256), 1, False)
    levels, anchors, strides = [], [], []
    for p, c, stride in ((p3, ch(64), 8), (p4, ch(128), 16), (p5, ch(256), 32)):
        box = conv(conv(conv(p, c, 64, 3), 64, 64, 3), 64, 64, act=False)
        cls = conv(conv(conv(p, c, 80, 3), 80, 80, 3), 80, 80, act=False)
        levels.append(node("Reshape", [cat(box, cls), const(np.array([1, 144, -1], np.int64))]))
        h = size // stride
        sy, sx = np.meshgrid(np.arange(h) + 0.5, np.arange(h) + 0.5, indexing="ij")
        anchors.append(np.stack([sx.reshape(-1), sy.reshape(-1)]))
        strides.append(np.full(h * h, float(stride)))
    a = sum(h.shape[1] for h in anchors)
    box, cls = split(node("Concat", levels, axis=2), [64, 80])
    d = node("Transpose", [node("Reshape", [box, const(np.array([1, 4, 16, a], np.int64))])], perm=[0, 2, 1, 3])
    d = node("Mul", [node("Softmax", [d], axis=1), const(np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1))])
    lt, rb = split(node("ReduceSum", [d, const(np.array([1], np.int64))], keepdims=0), [2, 2])
    anc = const(np.concatenate(anchors, 1)[None].astype(np.float32))
    x1y1, x2y2 = node("Sub", [anc, lt]), node("Add", [anc, rb])
    centre = node("Div", [node("Add", [x1y1, x2y2]), const(np.array(2.0, np.float32))])
    dbox = node("Mul", [cat(centre, node("Sub", [x2y2, x1y1])), const(np.concatenate(strides)[None].astype(
        np.float32))])
    y = cat(dbox, node("Sigmoid", [cls]))
    graph = helper.make_graph(nodes, "yolo_like",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 84, a])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lpusim-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
