# GPT-2 355M on OpenWebText with Sophia-H: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_medium_sophiah.py
include("gpt2_medium.py")   # model, data, batch, schedule

out_dir = "out-gpt2-medium-sophiah"
wandb_run_name = "gpt2-medium-sophiah"

optimizer_name = "sophiah"
# betas, weight decay, rho: train.py's OPTIMIZER_DEFAULTS["sophiah"]; this size's own:
learning_rate = 7e-4
