# GPT-2 1.5B on OpenWebText with Sophia-G.
#   torchrun --standalone --nproc_per_node=8 train_sophiag.py config/train_gpt2_xl_sophiag.py --fsdp=True
include("parts/gpt2_xl.py")   # model, data, batch, schedule

out_dir = "out-gpt2-xl-sophiag"
wandb_run_name = "gpt2-xl-sophiag"

optimizer_name = "sophiag"
# betas, weight decay, rho: optimizers.py's OPTIMIZER_DEFAULTS["sophiag"] (rho 0.05, as at 124M and 774M); this size's
# own, chosen here (no paper or upstream value for GPT-2 1.5B): 774M's 3e-4 scaled by 0.8, the ratio of GPT-3's
# learning rates at 1.3B and 760M (2.0e-4 / 2.5e-4), the same rule as for AdamW and Lion at this size
learning_rate = 2.4e-4
