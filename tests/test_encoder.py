"""Dense encoder: parity with transformers (tiny random BERT and the shipped MiniLM), bucketing
without recompilation, sharded == single device, and errors that name the file and tensor."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from ssp_jax.models.encoder import TextEncoder, length_buckets, load_hf_encoder, minilm_path, row_buckets
from ssp_jax.models.sharding import MeshConfig, make_mesh

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = ("the a of and in is was city river born capital company founded by north south paris france "
          "london fox dog quick brown lazy jumps over people who lived").split()
MAX_LENGTH = 24
SENTENCES = [
    "Paris is the capital of France.",
    "the quick brown fox jumps over the lazy dog",
    "",
    "Zyx Ωmega!",  # split into word pieces; "Ωmega" is [UNK]
    # longer than MAX_LENGTH: truncated before [SEP]
    "people who lived in the north city of london and the south city of paris were born by the river",
    "a company founded by a dog",
]


def build_wordpiece(directory: Path) -> tokenizers.Tokenizer:
    """A lower-casing BERT WordPiece tokenizer with [CLS]/[SEP] post-processing, saved as tokenizer.json."""
    letters = sorted(set("".join(_WORDS)) | set("zyx.!,"))
    vocab_list = _SPECIALS + _WORDS + letters + ["##" + c for c in letters]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tok.post_processor = tokenizers.processors.BertProcessing(("[SEP]", vocab["[SEP]"]),
                                                              ("[CLS]", vocab["[CLS]"]))
    tok.decoder = tokenizers.decoders.WordPiece()
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return tok


def build_bert(directory: Path, model_cls: type = transformers.BertModel, seed: int = 0) -> torch.nn.Module:
    """A tiny random BERT with every weight (LayerNorms included) perturbed, saved with its tokenizer."""
    vocab_size = build_wordpiece(directory).get_vocab_size()
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale_init = "layernorm.weight" in name.lower()
            param.copy_((1.0 if scale_init else 0.0) + (0.1 if scale_init else 0.3) * torch.randn_like(param))
    model.save_pretrained(directory)
    return model


def reference(model: torch.nn.Module, directory: Path, texts: list[str], max_length: int) -> np.ndarray:
    """transformers forward + mean pooling over real tokens + L2 normalisation."""
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), pad_token="[PAD]")
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


class CompileCounter:
    """Counts XLA backend compilations while active."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, event: str, duration: float, **kwargs: object) -> None:
        self.count += event == _BACKEND_COMPILE_EVENT

    def __enter__(self) -> "CompileCounter":
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc: object) -> None:
        jax.monitoring.unregister_event_duration_listener(self)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    directory = tmp_path_factory.mktemp("tiny-bert")
    return build_bert(directory), directory


@pytest.fixture(scope="module")
def minilm() -> tuple[TextEncoder, Path]:
    path = minilm_path()
    return TextEncoder.load(path, query_prefix="query: ", batch_size=8), path


@pytest.mark.parametrize("model_cls", [transformers.BertModel, transformers.BertForMaskedLM],
                         ids=["bare-names", "bert-prefix"])
def test_tiny_bert_parity(tmp_path: Path, model_cls: type) -> None:
    model = build_bert(tmp_path, model_cls)
    encoder = TextEncoder.load(tmp_path, max_length=MAX_LENGTH, batch_size=4)
    got = encoder.encode_passages(SENTENCES)
    torch_model = model.bert if model_cls is transformers.BertForMaskedLM else model
    want = reference(torch_model, tmp_path, SENTENCES, MAX_LENGTH)
    assert got.shape == (len(SENTENCES), 32) and got.dtype == np.float32 and encoder.dim == 32
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert np.abs(got[0] - got[1]).max() > 0.1  # the weights are far from trivial


def test_minilm_matches_transformers(minilm: tuple[TextEncoder, Path]) -> None:
    encoder, path = minilm
    texts = ["What is the capital of France?", "Paris is the capital and largest city of France.",
             "The mitochondria is the powerhouse of the cell. " * 8, "Hi"]
    model = transformers.AutoModel.from_pretrained(path).eval()
    np.testing.assert_allclose(encoder.encode_passages(texts), reference(model, path, texts, 256), atol=1e-4)
    queries = encoder.encode_queries(texts)
    np.testing.assert_allclose(queries, reference(model, path, ["query: " + t for t in texts], 256), atol=1e-4)
    assert np.abs(queries - encoder.encode_passages(texts)).max() > 1e-2
    assert encoder.dim == 384


def test_minilm_ranks_the_relevant_passage_first(minilm: tuple[TextEncoder, Path]) -> None:
    encoder, _ = minilm
    passages = encoder.encode_passages(["Paris is the capital of France.", "Bananas are rich in potassium.",
                                        "The Nile is a river in Africa."])
    queries = encoder.encode_queries(["Which river flows through Africa?", "What fruit has potassium?"])
    scores = queries @ passages.T
    assert scores.argmax(axis=1).tolist() == [2, 1]


@pytest.mark.slow
def test_minilm_bfloat16_stays_close_to_float32(minilm: tuple[TextEncoder, Path]) -> None:
    encoder, path = minilm
    texts = ["Paris is the capital of France.", "The Nile is a river in Africa. " * 6]
    bf16 = TextEncoder.load(path, batch_size=8, dtype="bfloat16").encode_passages(texts)
    assert bf16.dtype == np.float32
    assert np.all(np.sum(bf16 * encoder.encode_passages(texts), axis=1) > 0.999)  # cosine similarity


@pytest.mark.slow
def test_buckets_do_not_recompile(tiny_bert: tuple[torch.nn.Module, Path]) -> None:
    _, directory = tiny_bert
    encoder = TextEncoder.load(directory, max_length=40, batch_size=4)
    assert encoder.buckets == length_buckets(40) == (16, 32, 40)
    e5 = length_buckets(512)  # E5: few compilations, padding at most 1/8 (or 16 tokens) per batch
    assert len(e5) == 24 and e5[-1] == 512
    assert all(0 < hi - lo <= max(16, lo // 8) for lo, hi in zip(e5, e5[1:], strict=False))
    assert encoder.row_buckets == row_buckets(4) == (1, 4) and row_buckets(64) == (1, 4, 16, 64)
    assert row_buckets(64, shards=8) == (8, 32, 64)
    word = "capital "
    warm = [word * n for n in (3, 20, 60)]  # token lengths 5, 22, 40 (truncated): one per bucket
    expected = np.concatenate([encoder.encode_passages([text]) for text in warm])  # one call per bucket

    def shapes() -> None:
        for size in (1, 3, 4, 5, 9):
            for n_words in (0, 7, 14, 30, 100):
                out = encoder.encode_passages([word * ((n_words + i) % 45) for i in range(size)])
                assert out.shape == (size, 32)

    with CompileCounter() as first:
        shapes()
    assert first.count <= len(encoder.row_buckets) * len(encoder.buckets)
    with CompileCounter() as counter:
        shapes()
        again = encoder.encode_passages(warm[::-1])[::-1]
    assert counter.count == 0
    np.testing.assert_allclose(again, expected, atol=1e-6)  # batch composition and order do not matter
    assert encoder.encode_passages([]).shape == (0, 32)


@pytest.mark.slow
def test_sharded_equals_single_device(tiny_bert: tuple[torch.nn.Module, Path]) -> None:
    assert jax.device_count() == 8
    _, directory = tiny_bert
    texts = SENTENCES * 3
    single = TextEncoder.load(directory, max_length=MAX_LENGTH, batch_size=8).encode_passages(texts)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = TextEncoder.load(directory, max_length=MAX_LENGTH, batch_size=8, mesh=mesh)
    model = load_hf_encoder(directory, mesh=mesh)  # the loader TextEncoder.load uses
    assert model.layers[0].wq.get_value().sharding.spec == P("fsdp", "tensor", None)
    assert model.layers[1].w_out.get_value().sharding.spec == P("tensor", "fsdp")
    assert model.word_embed.get_value().sharding.spec == P(None, "fsdp")  # 91 rows: tensor=2 does not divide
    np.testing.assert_allclose(sharded.encode_passages(texts), single, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size=6 must be a multiple of the 4 batch shards"):
        TextEncoder.load(directory, max_length=MAX_LENGTH, batch_size=6, mesh=mesh)


def _edit_config(directory: Path, **changes: object) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def test_wrong_model_type_names_the_file(tmp_path: Path) -> None:
    build_bert(tmp_path)
    _edit_config(tmp_path, model_type="roberta")
    with pytest.raises(ValueError, match=r"config\.json: model_type='roberta' is not supported"):
        TextEncoder.load(tmp_path)


def test_missing_tensor_names_file_and_tensor(tmp_path: Path) -> None:
    build_bert(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["encoder.layer.1.output.dense.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'encoder\.layer\.1\.output\.dense\.bias' "
                                         r"is missing"):
        TextEncoder.load(tmp_path)


def test_shape_mismatch_names_file_and_tensor(tmp_path: Path) -> None:
    build_bert(tmp_path)
    _edit_config(tmp_path, intermediate_size=48)
    message = (r"model\.safetensors: tensor 'encoder\.layer\.0\.intermediate\.dense\.weight' "
               r"has shape \(64, 32\); config\.json implies \(48, 32\)")
    with pytest.raises(ValueError, match=message):
        TextEncoder.load(tmp_path)


def test_missing_tokenizer_and_bad_max_length(tmp_path: Path) -> None:
    build_bert(tmp_path)
    with pytest.raises(ValueError, match=r"max_length=65 must be in \[2, 64\]"):
        TextEncoder.load(tmp_path, max_length=65)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json not found"):
        TextEncoder.load(tmp_path)
