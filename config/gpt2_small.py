# GPT-2 124M on OpenWebText: model, data and schedule, shared by every optimizer's config at this size
# (train_gpt2_small_*.py), so that runs differ only in the optimizer. The paper's and upstream's settings.

# model: 12 layers, 12 heads, 768 wide; no biases; vocabulary 50257 padded to 50304
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
dropout = 0.0
bias = False
scale_attn_by_inverse_layer_idx = True     # as upstream's runs (HF GPT-2 option), for every optimizer

# data: OpenWebText (python data/openwebtext/prepare.py)
dataset = "openwebtext"
total_bs = 480                 # sequences per step = 491,520 tokens; Sophia-G's bs is derived from it
# processes x batch_size x gradient_accumulation_steps must make 480 (accumulation is derived), e.g.
#   8 GPUs x 12 x 5 (8xA100-40GB) | 10 x 8 x 6 (10xA5000) | 4 x 12 x 10 | 1 x 12 x 40
batch_size = 12

# schedule: 100k steps (~49B tokens), 2k warmup, cosine to min_lr = 0.05 x peak (the paper's ratio)
max_iters = 100000
lr_decay_iters = 100000
warmup_iters = 2000
min_lr = None                  # None -> 0.05 x learning_rate
grad_clip = 1.0

eval_interval = 1000
eval_iters = 200
log_interval = 10
wandb_log = True
wandb_project = "sophia"
