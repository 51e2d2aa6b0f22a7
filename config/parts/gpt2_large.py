# GPT-2 774M on OpenWebText: the model and micro-batch, shared by every optimizer's config at this size
# (train_gpt2_large_*.py), so that runs differ only in the optimizer. The paper's and upstream's settings.

include("gpt2_openwebtext.py")   # data, batch, schedule

# model: 36 layers, 20 heads, 1280 wide
n_layer = 36
n_head = 20
n_embd = 1280

# processes x batch_size x gradient_accumulation_steps must make total_bs = 480 (accumulation is derived), e.g.
#   8 GPUs x 4 x 15 | 10 x 4 x 12 (upstream) | 8 x 6 x 10 (80GB)
batch_size = 4
