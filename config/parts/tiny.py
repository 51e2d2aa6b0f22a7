# A ~1M-parameter GPT on the embedded stdlib corpus (python data/stdlib/prepare.py): model, data and
# schedule shared by train_tiny_*.py, so that their runs differ only in the optimizer. Trains in seconds
# on a laptop CPU.
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
eval_sequences = 160            # per split (20 micro-batches of 8), at every batch_size and world size
log_interval = 1
