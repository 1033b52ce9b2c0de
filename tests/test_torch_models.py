"""Models exported by torch.onnx.export with random weights (torchvision, transformers): slow, `pytest -m slow`.

Skipped when torch / torchvision / transformers are not installed (they are not test dependencies: several GB)."""
import pytest

from onnx_cases import assert_matches_onnxruntime

torch = pytest.importorskip("torch")


def export(module, args, path, input_names):
    torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=17, input_names=input_names)
    import onnx
    return onnx.load(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_model_matches_onnxruntime(name, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    m = export(model, (torch.randn(1, 3, 224, 224),), tmp_path / f"{name}.onnx", ["input"])
    program, result, cmp = assert_matches_onnxruntime(m)
    assert cmp["max_rel_error"] < 1e-2


@pytest.mark.slow
def test_transformers_bert_encoder_matches_onnxruntime(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=512)
    bert = transformers.BertModel(config, add_pooling_layer=False)

    class Embeddings(torch.nn.Module):  # token ids would need integer inputs; the chip path takes embeddings
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, e):
            return self.m(inputs_embeds=e).last_hidden_state
    m = export(Embeddings(bert), (torch.randn(1, 16, 128),), tmp_path / "bert.onnx", ["inputs_embeds"])
    assert_matches_onnxruntime(m)


@pytest.mark.slow
def test_transformers_gpt2_decoder_matches_onnxruntime(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(n_embd=128, n_layer=2, n_head=2, n_positions=64))

    class Embeddings(torch.nn.Module):  # causal mask, KV-cache concat of an empty past, gelu_new (Pow, Tanh)
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, e):
            return self.m(inputs_embeds=e).last_hidden_state
    m = export(Embeddings(gpt2), (torch.randn(1, 16, 128),), tmp_path / "gpt2.onnx", ["inputs_embeds"])
    assert_matches_onnxruntime(m)
