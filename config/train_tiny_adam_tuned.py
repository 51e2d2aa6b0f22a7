# The tiny GPT with AdamW at the comparison harness's tuned setting: config/parts/compare_tiny.py (400 steps of 16
# sequences, one micro-batch, 40 warmup steps) and the best lr of its sweep (assets/compare/results.md,
# python bench/compare_optimizers.py --out assets/compare). Other settings: optimizers.py's OPTIMIZER_DEFAULTS["adamw"].
#   python train_adam.py config/train_tiny_adam_tuned.py
include("parts/compare_tiny.py")

out_dir = "out-tiny-adam-tuned"
wandb_run_name = "tiny-adam-tuned"
log_interval = 1
always_save_checkpoint = True

optimizer_name = "adamw"
learning_rate = 4e-3
