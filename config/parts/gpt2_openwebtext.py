# Everything shared by every GPT-2 run, at every size and with every optimizer: data, batch, schedule and
# logging (the paper's and upstream's settings). config/parts/gpt2_{small,medium,large}.py include it and add the
# model; the train_gpt2_*.py configs add the optimizer, so runs differ only where they must.

block_size = 1024
dropout = 0.0
bias = False
scale_attn_by_inverse_layer_idx = True     # as upstream's runs (HF GPT-2 option), for every optimizer

# data: OpenWebText (python data/openwebtext/prepare.py); vocabulary 50257 padded to 50304
dataset = "openwebtext"
total_bs = 480                 # sequences per step = 491,520 tokens; Sophia-G's bs is derived from it

# schedule: 100k steps (~49B tokens), 2k warmup, cosine to min_lr = 0.05 x peak (the paper's ratio)
max_iters = 100000
lr_decay_iters = 100000
warmup_iters = 2000
min_lr = None                  # None -> 0.05 x learning_rate
grad_clip = 1.0

eval_interval = 1000
eval_sequences = 2400           # per split, at every batch_size and world size (small: 200 micro-batches of 12)
log_interval = 10
wandb_log = True
wandb_project = "sophia"
