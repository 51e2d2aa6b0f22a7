# The shared settings of bench/compare_optimizers.py: everything here is identical for every optimizer;
# the harness adds only the optimizer, its own hyperparameters, the seed and the output folder.
# The tiny GPT of tiny.py (4 layers, width 128, context 64, byte-level stdlib corpus), trained longer, on one
# micro-batch per step. min_lr (0.05 x peak), grad_clip (1.0) and hess_interval (10) are train.py's defaults,
# the same for every optimizer.
include("tiny.py")

total_bs = 16                      # 1,024 tokens per step
batch_size = 16

max_iters = 400                    # 409,600 tokens per run
lr_decay_iters = 400
warmup_iters = 40

eval_interval = 25
eval_sequences = 128               # fixed sequences (8,192 tokens) per split, at every batch_size
log_interval = 5
always_save_checkpoint = False
keep_last = 1
