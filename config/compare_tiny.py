# The shared settings of bench/compare_optimizers.py: everything here is identical for every optimizer;
# the harness adds only the optimizer, its own hyperparameters, the seed and the output folder.
dataset = "stdlib"                 # byte-level tokens of the Python standard library (vocab 257 -> 320)

n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
dropout = 0.0

total_bs = 16                      # 1,024 tokens per step
batch_size = 16

max_iters = 400                    # 409,600 tokens per run
lr_decay_iters = 400
warmup_iters = 40
min_lr = None                      # 0.05 x learning_rate, for every optimizer
grad_clip = 1.0
hess_interval = 10

eval_interval = 25
eval_iters = 8                     # 8 x 16 fixed sequences (8,192 tokens) per split
log_interval = 5
always_save_checkpoint = False
keep_last = 1
