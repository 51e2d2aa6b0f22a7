# GPT-2 124M on OpenWebText: the model and micro-batch, shared by every optimizer's config at this size
# (train_gpt2_small_*.py), so that runs differ only in the optimizer. The paper's and upstream's settings.

include("gpt2_openwebtext.py")   # data, batch, schedule

# model: 12 layers, 12 heads, 768 wide
n_layer = 12
n_head = 12
n_embd = 768

# processes x batch_size x gradient_accumulation_steps must make total_bs = 480 (accumulation is derived), e.g.
#   8 GPUs x 12 x 5 (8xA100-40GB) | 10 x 8 x 6 (10xA5000) | 4 x 12 x 10 | 1 x 12 x 40
batch_size = 12
