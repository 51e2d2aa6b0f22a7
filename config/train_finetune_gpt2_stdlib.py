# Fine-tune the pretrained GPT-2 124M (Hugging Face Hub, through transformers; cached as transformers caches) with
# Sophia-G on the embedded stdlib corpus, tokenized with GPT-2 BPE. A new run: fresh optimizer, empty out_dir.
#   python data/stdlib/prepare.py --tokenizer=gpt2 --out_dir=data/stdlib_gpt2
#   python train_sophiag.py config/train_finetune_gpt2_stdlib.py                  # a GPU; CPU works, slowly
#   python train_sophiag.py config/train_finetune_gpt2_stdlib.py --init_from=resume   # continue it
# Another source: --init_from=hf:./my-export (a GPT2LMHeadModel directory, e.g. from export_hf.py) with its shape
# below, or hf:gpt2-medium / -large / -xl with theirs (a shape key that disagrees with the checkpoint is refused).
init_from = "hf:gpt2"
dataset = "stdlib_gpt2"            # data/stdlib_gpt2: GPT-2 BPE, vocab 50257 (padded to 50304, see docs)
out_dir = "out-finetune-gpt2-stdlib"
wandb_run_name = "finetune-gpt2-stdlib"

# gpt2's shape, stated so that --init_from=resume rebuilds the same model (hf: takes it from the checkpoint)
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
bias = True
scale_attn_by_inverse_layer_idx = False   # GPT-2 as released does not scale by 1 / (layer + 1)
dropout = 0.0

total_bs = 16                      # 16 x 1024 tokens per iteration
batch_size = 4
max_iters = 300
lr_decay_iters = 300
warmup_iters = 30
eval_interval = 50
eval_sequences = 64

optimizer_name = "sophiag"
learning_rate = 3e-5               # small: a fine-tune (pretraining 124M with Sophia-G uses 6e-4)
weight_decay = 0.1
hess_total_bs = 8                  # the Hessian pass on half a step's sequences (ĝ rescaled: sophia.gnb_weight)
