# GPT-2 355M on OpenWebText: the model and micro-batch, shared by every optimizer's config at this size
# (train_gpt2_medium_*.py), so that runs differ only in the optimizer. The paper's and upstream's settings.

include("gpt2_openwebtext.py")   # data, batch, schedule

# model: 24 layers, 16 heads, 1024 wide
n_layer = 24
n_head = 16
n_embd = 1024

# processes x batch_size x gradient_accumulation_steps must make total_bs = 480 (accumulation is derived), e.g.
#   8 GPUs x 6 x 10 (8xA100-40GB) | 8 x 12 x 5 (80GB) | 4 x 6 x 20 | 1 x 6 x 80
batch_size = 6
