"""transformers' BertModel from token ids (int64 `input_ids`, the embedding Gather on the chip) and an int64
`attention_mask` (kept as one row per sequence, lower_index.lower_maskrow): slow, `pytest -m slow`.

Skipped when torch / transformers are not installed (they are not test dependencies)."""
import numpy as np
import pytest

from onnx_cases import assert_matches_onnxruntime

torch = pytest.importorskip("torch")


def export_bert(tmp_path, with_mask: bool, attention: str | None = None):
    transformers = pytest.importorskip("transformers")
    import onnx
    torch.manual_seed(0)
    # BERT's own 30522-token vocabulary: ids above 2048 take the two-digit one-hot (lower/index.py)
    config = transformers.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=512)
    if attention:
        config._attn_implementation = attention
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()

    class FromIds(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask=None):
            return self.m(input_ids=ids, attention_mask=mask).last_hidden_state
    ids = torch.randint(0, config.vocab_size, (1, 16))
    args = (ids, torch.ones(1, 16, dtype=torch.int64)) if with_mask else (ids,)
    path = tmp_path / "bert_ids.onnx"
    torch.onnx.export(FromIds(bert), args, str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"][:len(args)])
    return onnx.load(str(path))


IDS = np.array([[101, 7592, 1010, 2088, 999, 102] + [0] * 10], dtype=np.int64)  # incl. ids > 2^12


@pytest.mark.slow
def test_transformers_bert_from_token_ids_matches_onnxruntime(tmp_path):
    m = export_bert(tmp_path, with_mask=False)
    program, result, cmp = assert_matches_onnxruntime(m)  # random ids below 30522
    assert program.random_inputs(0)["input_ids"].dtype == np.int64
    program, result, cmp = assert_matches_onnxruntime(m, {"input_ids": IDS})
    assert cmp["max_rel_error"] < 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("attention", [None, "eager"])  # sdpa's mask (-inf, IsNaN) and eager's (-3.4e38)
def test_transformers_bert_with_attention_mask_matches_onnxruntime(tmp_path, attention):
    m = export_bert(tmp_path, with_mask=True, attention=attention)
    mask = np.array([[1] * 6 + [0] * 10], dtype=np.int64)  # the padding of IDS masked out
    program, result, cmp = assert_matches_onnxruntime(m, {"input_ids": IDS, "attention_mask": mask})
    assert cmp["max_rel_error"] < 1e-2
    unmasked = program.run({"input_ids": IDS, "attention_mask": np.ones_like(mask)})
    assert not np.allclose(unmasked.outputs[m.graph.output[0].name][:, :6],
                           result.outputs[m.graph.output[0].name][:, :6], atol=1e-3)  # the mask changed the result
