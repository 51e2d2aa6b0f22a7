# The tiny GPT with Sophia-H at the comparison harness's tuned setting: config/parts/compare_tiny.py (400 steps of 16
# sequences, one micro-batch, 40 warmup steps) and the best lr and rho of its sweep (assets/compare/results.md,
# python bench/compare_optimizers.py --out assets/compare). Other settings: optimizers.py's OPTIMIZER_DEFAULTS["sophiah"].
#   python train.py config/train_tiny_sophiah_tuned.py
include("parts/compare_tiny.py")

out_dir = "out-tiny-sophiah-tuned"
wandb_run_name = "tiny-sophiah-tuned"
log_interval = 1
always_save_checkpoint = True

optimizer_name = "sophiah"
learning_rate = 5e-4
rho = 1.0
