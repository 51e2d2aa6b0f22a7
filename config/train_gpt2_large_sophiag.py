# GPT-2 770M on OpenWebText, sophiag: the Sophia paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train_sophiag.py config/train_gpt2_large_sophiag.py
out_dir = "out-gpt2-large-sophiag"
wandb_run_name = "gpt2-large-sophiag"

# --- model: GPT-2 770M (36 layers, 20 heads, 1280 wide), no biases, vocab 50304 ---
n_layer = 36
n_head = 20
n_embd = 1280
block_size = 1024
dropout = 0.0
bias = False
scale_attn_by_inverse_layer_idx = True     # as upstream's runs (HF GPT-2 option)

# --- data: OpenWebText (python data/openwebtext/prepare.py) ---
dataset = "openwebtext"
total_bs = 480                 # sequences per step = 491,520 tokens; Sophia-G's bs is derived from it
# nproc x batch_size x gradient_accumulation_steps must be 480 (accumulation is derived):
#   8 GPUs x 4 x 15 = 480 | 10 x 4 x 12 = 480 (upstream) | 8 x 6 x 10 (80GB)
batch_size = 4

# --- schedule: 100k steps (~49B tokens), 2k warmup, cosine to min_lr = 0.05 x peak (the paper's ratio;
#     upstream's config used min_lr = 1e-5 for this run) ---
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
optimizer_name = "sophiag"
learning_rate = 3e-4
rho = 0.05
weight_decay = 0.2
beta1 = 0.965
beta2 = 0.99
hess_interval = 10             # Hessian EMA refreshed after steps 9, 19, 29, ...
