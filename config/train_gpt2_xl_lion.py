# GPT-2 1.5B on OpenWebText with Lion.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_xl_lion.py --fsdp=True
include("parts/gpt2_xl.py")   # model, data, batch, schedule

out_dir = "out-gpt2-xl-lion"
wandb_run_name = "gpt2-xl-lion"

optimizer_name = "lion"
# betas, weight decay: optimizers.py's OPTIMIZER_DEFAULTS["lion"]; this size's own, chosen here (no paper or upstream
# value for GPT-2 1.5B): 774M's 8e-5 scaled by 0.8, the ratio of GPT-3's learning rates at 1.3B and 760M
learning_rate = 6.4e-5
