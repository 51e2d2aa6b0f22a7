# The tiny GPT with AdamW, the baseline of train_tiny_sophiag.py.
#   python train_adam.py config/train_tiny_adam.py
#   torchrun --standalone --nproc_per_node=2 train_adam.py config/train_tiny_adam.py
include("parts/tiny.py")   # model, data, schedule

out_dir = "out-tiny-adam"
wandb_run_name = "tiny-adam"

optimizer_name = "adamw"
# betas, weight decay: optimizers.py's OPTIMIZER_DEFAULTS["adamw"]; this size's own:
learning_rate = 2e-3
