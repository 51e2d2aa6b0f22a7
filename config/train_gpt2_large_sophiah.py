# GPT-2 774M on OpenWebText with Sophia-H: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_large_sophiah.py
include("gpt2_large.py")   # model, data, batch, schedule

out_dir = "out-gpt2-large-sophiah"
wandb_run_name = "gpt2-large-sophiah"

optimizer_name = "sophiah"
# betas, weight decay, rho: train.py's OPTIMIZER_DEFAULTS["sophiah"]; this size's own:
learning_rate = 3e-4
