# GPT-2 125M on OpenWebText, sophiah: the Sophia paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small_sophiah.py
out_dir = "out-gpt2-small-sophiah"
wandb_run_name = "gpt2-small-sophiah"

# --- model: GPT-2 125M (12 layers, 12 heads, 768 wide), no biases, vocab 50304 ---
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
dropout = 0.0
bias = False
scale_attn_by_inverse_layer_idx = True     # as upstream's runs (HF GPT-2 option)

# --- data: OpenWebText (python data/openwebtext/prepare.py) ---
dataset = "openwebtext"
total_bs = 480                 # sequences per step = 491,520 tokens; Sophia-G's bs is derived from it
# nproc x batch_size x gradient_accumulation_steps must be 480 (accumulation is derived):
#   8 GPUs x 12 x 5 = 480 (8xA100-40GB) | 10 x 8 x 6 = 480 (10xA5000) | 4 x 12 x 10 | 1 x 12 x 40
batch_size = 12

# --- schedule: 100k steps (~49B tokens), 2k warmup, cosine to min_lr = 0.05 x peak (the paper's ratio;
#     upstream's config used min_lr = none (no upstream run)) ---
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

# --- optimizer ---
optimizer_name = "sophiah"
learning_rate = 6e-4
rho = 0.01                     # the paper's gamma for Sophia-H (Hutchinson estimates the Hessian itself, no bs)
weight_decay = 0.2
beta1 = 0.965
beta2 = 0.99
hess_interval = 10
