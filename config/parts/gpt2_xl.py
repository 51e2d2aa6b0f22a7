# GPT-2 1.5B on OpenWebText: the model and micro-batch, shared by every optimizer's config at this size
# (train_gpt2_xl_*.py), so that runs differ only in the optimizer. GPT-2 XL's shape; neither the Sophia paper
# nor upstream trains this size on OpenWebText (the paper's 1.5B runs are GPT NeoX on the Pile), so the
# optimizers' learning rates are this repo's choice (see train_gpt2_xl_*.py).

include("gpt2_openwebtext.py")   # data, batch, schedule

# model: 48 layers, 25 heads of 64, 1600 wide (1557M parameters at vocabulary 50304, no biases)
n_layer = 48
n_head = 25
n_embd = 1600

# processes x batch_size x gradient_accumulation_steps must make total_bs = 480 (accumulation is derived), e.g.
#   8 GPUs x 4 x 15 | 16 x 2 x 15 | 8 x 2 x 30 | 32 x 3 x 5 (bench/memory_plan.py: what fits where)
# 16 bytes per parameter (weights, gradient, m, h in fp32) are 25 GB per GPU under DDP: use --fsdp=True
# (and --activation_checkpointing=True on 40 GB GPUs)
batch_size = 4
