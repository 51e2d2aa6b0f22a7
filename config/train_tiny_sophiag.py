# A ~1M-parameter GPT on the embedded stdlib corpus (python data/stdlib/prepare.py): trains in seconds on a
# laptop CPU. 100 iterations = 10 Hessian refreshes.
#   python train_sophiag.py config/train_tiny_sophiag.py
#   torchrun --standalone --nproc_per_node=2 train_sophiag.py config/train_tiny_sophiag.py
out_dir = "out-tiny-sophiag"
wandb_run_name = "tiny-sophiag"
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

optimizer_name = "sophiag"
learning_rate = 2e-3
weight_decay = 0.2
beta1 = 0.965
beta2 = 0.99
rho = 0.05
hess_interval = 10
hess_total_bs = 4                  # the Hessian pass on 4 of the 16 sequences: +2.5% compute instead of +10%
                                   # (upstream-faithful: --hess_total_bs=16; bench/train_walltime.py times both)
