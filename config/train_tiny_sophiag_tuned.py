# The tiny GPT with Sophia-G at the comparison harness's tuned setting: config/parts/compare_tiny.py (400 steps of 16
# sequences, one micro-batch, 40 warmup steps) and the best lr and rho of its sweep (assets/compare/results.md,
# python bench/compare_optimizers.py --out assets/compare). Other settings: optimizers.py's OPTIMIZER_DEFAULTS["sophiag"].
#   python train_sophiag.py config/train_tiny_sophiag_tuned.py
include("parts/compare_tiny.py")

out_dir = "out-tiny-sophiag-tuned"
wandb_run_name = "tiny-sophiag-tuned"
log_interval = 1
always_save_checkpoint = True

optimizer_name = "sophiag"
learning_rate = 2.5e-4
rho = 0.05
# the Hessian pass on the full batch (hess_total_bs = total_bs), as in the harness
