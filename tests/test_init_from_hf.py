"""train.py --init_from=hf:<name or dir>: a transformers GPT-2 mapped into model.py's GPT. Offline: a tiny run with
bias=True is exported (export_hf.py) and read back; the Hub names are checked with from_pretrained recorded, and the
error when the Hub is out of reach must be one line."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import export_hf  # noqa: E402
import train  # noqa: E402
from helpers import assert_clean_error, events, run_cli_in_process, tiny_argv, train_cli  # noqa: E402

EVAL = ["--eval_sequences=16", "--eval_interval=4"]
SHAPE = ["--n_layer=2", "--n_head=2", "--n_embd=64"]   # given again with hf: they agree with the export


@pytest.fixture(scope="module")
def exported(data_dir, tmp_path_factory):
    """A 4-iteration tiny run with biases (checkpoint and val loss at iteration 4), exported to an HF directory."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    src = tmp_path_factory.mktemp("src")
    train.main(tiny_argv(data_dir, src, "--bias=True", "--max_iters=4", *SHAPE, *EVAL))
    hf_dir = export_hf.main([f"--out_dir={src}", f"--hf_dir={src / 'hf'}"])
    torch.set_num_threads(threads)
    return src, hf_dir


def test_exported_gpt2_starts_at_its_val_loss_and_trains(exported, data_dir, tmp_path, one_thread):
    src, hf_dir = exported
    out = tmp_path / "finetune"
    train.main(tiny_argv(data_dir, out, f"--init_from=hf:{hf_dir}", "--max_iters=4", *SHAPE, *EVAL))
    source_val, val = events(src, "eval")[4]["val/loss"], events(out, "eval")
    assert val[0]["val/loss"] == pytest.approx(source_val, abs=1e-5)      # the same function, mapped back
    assert val[4]["val/loss"] < val[0]["val/loss"]                         # and it trains from there
    ckpt = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
    assert ckpt["model_args"]["bias"] is True                            # taken from the checkpoint
    # the same command with more iterations continues the saved run (as init_from=auto), not the pretrained weights:
    # it re-evaluates the checkpoint at 4 (the trained model's loss, not the pretrained one's) and goes on to 8
    train.main(tiny_argv(data_dir, out, f"--init_from=hf:{hf_dir}", "--max_iters=8", *SHAPE, *EVAL))
    again = events(out, "eval")
    assert again[4]["val/loss"] == pytest.approx(val[4]["val/loss"], abs=1e-6)
    assert again[8]["val/loss"] < val[0]["val/loss"]
    assert sorted(events(out)) == list(range(8)) and list(events(out, "restart")) == [4]


def test_padding_rows_are_the_mean_embedding(exported):
    from model import GPT, GPTConfig
    _, hf_dir = exported
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir)
    cfg = hf.config
    model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.n_positions,
                          vocab_size=cfg.vocab_size + 64, bias=True))
    export_hf.load_hf_weights(model, str(hf_dir))
    wte, theirs = model.transformer.wte.weight, hf.transformer.wte.weight
    assert torch.equal(wte[:cfg.vocab_size], theirs)
    assert torch.allclose(wte[cfg.vocab_size:], theirs.mean(0).expand(64, -1))
    c_fc = model.transformer.h[0].mlp.c_fc.weight
    assert torch.equal(c_fc, hf.transformer.h[0].mlp.c_fc.weight.t())   # Conv1D (in, out) -> Linear (out, in)


def test_a_disagreeing_shape_key_is_refused(exported, data_dir, tmp_path, capsys):
    _, hf_dir = exported
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={tmp_path}", f"--init_from=hf:{hf_dir}",
                       "--n_head=2", "--n_embd=64")     # n_layer=4 from the tiny config, the export has 2
    assert_clean_error(result, "n_layer=4", "n_layer is 2")
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={tmp_path}", "--init_from=pretrained")
    assert_clean_error(result, "init_from='pretrained'", "hf:")
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={tmp_path}", f"--init_from=hf:{tmp_path / 'no'}")
    assert_clean_error(result, "cannot load a GPT-2 model")


def test_hub_names_go_to_from_pretrained(exported, data_dir, tmp_path, monkeypatch, capsys):
    """hf:gpt2-medium asks transformers for "gpt2-medium" (config and weights); here they come from the local
    export. With the Hub out of reach (and nothing cached), the error is one line."""
    _, hf_dir = exported
    asked = []
    for cls in (transformers.GPT2Config, transformers.GPT2LMHeadModel):
        original = cls.from_pretrained.__func__

        def recorded(klass, name, *args, _original=original, **kwargs):
            asked.append((klass.__name__, name))
            return _original(klass, str(hf_dir), *args, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", classmethod(recorded))
    train.main(tiny_argv(data_dir, tmp_path / "hub", "--init_from=hf:gpt2-medium", "--max_iters=1", *SHAPE, *EVAL))
    asked = [(cls, name) for cls, name in asked if name != str(hf_dir)]   # from_pretrained's own inner calls
    assert asked == [("GPT2Config", "gpt2-medium"), ("GPT2LMHeadModel", "gpt2-medium")]
    monkeypatch.undo()

    def unreachable(klass, name, *args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
                      "in the cached files.\nCheck your internet connection or see how to run the library in "
                      "offline mode.")
    monkeypatch.setattr(transformers.GPT2Config, "from_pretrained", classmethod(unreachable))
    result = run_cli_in_process(train.main, [*tiny_argv(data_dir, tmp_path / "offline", "--init_from=hf:gpt2")],
                                capsys, defaults=dict(optimizer_name="sophiag"))
    assert_clean_error(result, "hf:gpt2", "couldn't connect")


def test_finetune_config_states_gpt2s_own_shape(monkeypatch):
    """config/train_finetune_gpt2_stdlib.py with hf:gpt2 (its config stood in by GPT2Config(), which is gpt2's):
    its stated shape keys agree with the checkpoint, so the hf: run starts and --init_from=resume rebuilds it."""
    from configurator import load_config
    cfg, applied = load_config(train.TrainConfig, ["config/train_finetune_gpt2_stdlib.py"])
    asked = []
    monkeypatch.setattr(transformers.GPT2Config, "from_pretrained",
                        classmethod(lambda klass, name, **kwargs: (asked.append(name), klass())[1]))
    export_hf.apply_hf_shape(cfg, train.given_keys(applied))
    assert asked == ["gpt2"] and (cfg.n_layer, cfg.block_size, cfg.bias) == (12, 1024, True)
