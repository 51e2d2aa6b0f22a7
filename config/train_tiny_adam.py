# A ~1M-parameter GPT on the embedded stdlib corpus (python data/stdlib/prepare.py): trains in seconds on a
# laptop CPU. The AdamW baseline of train_tiny_sophiag.py: everything but the optimizer is identical.
#   python train_adam.py config/train_tiny_adam.py
#   torchrun --standalone --nproc_per_node=2 train_adam.py config/train_tiny_adam.py
out_dir = "out-tiny-adam"
wandb_run_name = "tiny-adam"
dataset = "stdlib"                 # byte-level tokens (vocab 257, padded to 320)

n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
dropout = 0.0

total_bs = 16                      # sequences per iteration: 1 process x 8 x 2 accumulation, or 2 x 8 x 1
batch_size = 8

max_iters = 100
lr_decay_iters = 100
warmup_iters = 10
eval_interval = 50
eval_iters = 20
log_interval = 1

optimizer_name = "adamw"
learning_rate = 2e-3
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
