# The tiny GPT with Sophia-G; 100 iterations = 10 Hessian refreshes.
#   python train_sophiag.py config/train_tiny_sophiag.py
#   torchrun --standalone --nproc_per_node=2 train_sophiag.py config/train_tiny_sophiag.py
include("parts/tiny.py")   # model, data, schedule

out_dir = "out-tiny-sophiag"
wandb_run_name = "tiny-sophiag"

optimizer_name = "sophiag"
# betas, weight decay, rho, hess_interval: train.py's defaults (OPTIMIZER_DEFAULTS["sophiag"]); this size's own:
learning_rate = 2e-3
hess_total_bs = 4                  # the Hessian pass on 4 of the 16 sequences: +2.5% compute instead of +10%
                                   # (upstream-faithful: --hess_total_bs=16; bench/train_walltime.py times both)
