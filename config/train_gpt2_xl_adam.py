# GPT-2 1.5B on OpenWebText with AdamW.
#   torchrun --standalone --nproc_per_node=8 train_adam.py config/train_gpt2_xl_adam.py --fsdp=True
include("parts/gpt2_xl.py")   # model, data, batch, schedule

out_dir = "out-gpt2-xl-adam"
wandb_run_name = "gpt2-xl-adam"

optimizer_name = "adamw"
# betas, weight decay: optimizers.py's OPTIMIZER_DEFAULTS["adamw"]; this size's own, chosen here (no paper or upstream
# value for GPT-2 1.5B): 774M's 2e-4 scaled by 0.8, the ratio of GPT-3's learning rates at 1.3B and 760M
learning_rate = 1.6e-4
