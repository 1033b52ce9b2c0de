"""transformers' BertModel from token ids (int64 `input_ids`, the embedding Gather on the chip): slow, `pytest -m slow`.

Skipped when torch / transformers are not installed (they are not test dependencies)."""
import numpy as np
import pytest

from onnx_cases import assert_matches_onnxruntime

torch = pytest.importorskip("torch")


@pytest.mark.slow
def test_transformers_bert_from_token_ids_matches_onnxruntime(tmp_path):
    transformers = pytest.importorskip("transformers")
    import onnx
    torch.manual_seed(0)
    # BERT's own 30522-token vocabulary: ids above 2048 take the two-digit one-hot (lower_index.py)
    config = transformers.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=512)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()

    class FromIds(torch.nn.Module):  # no attention_mask: all tokens attend (the mask path is not lowered yet)
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(input_ids=ids).last_hidden_state
    ids = torch.randint(0, config.vocab_size, (1, 16))
    path = tmp_path / "bert_ids.onnx"
    torch.onnx.export(FromIds(bert), (ids,), str(path), dynamo=False, opset_version=17, input_names=["input_ids"])
    m = onnx.load(str(path))
    program, result, cmp = assert_matches_onnxruntime(m)  # random ids below 30522
    assert program.random_inputs(0)["input_ids"].dtype == np.int64
    ids = np.array([[101, 7592, 1010, 2088, 999, 102] + [0] * 10], dtype=np.int64)  # incl. ids > 2^12
    program, result, cmp = assert_matches_onnxruntime(m, {"input_ids": ids})
    assert cmp["max_rel_error"] < 1e-2
