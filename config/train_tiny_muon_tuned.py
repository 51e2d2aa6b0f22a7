# The tiny GPT with Muon (on the blocks' matrices; AdamW on the rest) at the comparison harness's tuned setting:
# config/parts/compare_tiny.py (400 steps of 16 sequences, one micro-batch, 40 warmup steps) and the best lr of its
# sweep (assets/compare/results.md, python bench/compare_optimizers.py --out assets/compare). Other settings:
# optimizers.py's OPTIMIZER_DEFAULTS["muon"] and train.py's muon_* defaults. On a CPU without bf16 instructions
# (AVX-512) its steps cost several times AdamW's: torch's Muon runs Newton-Schulz in bf16.
#   python train.py config/train_tiny_muon_tuned.py
include("parts/compare_tiny.py")

out_dir = "out-tiny-muon-tuned"
wandb_run_name = "tiny-muon-tuned"
log_interval = 1
always_save_checkpoint = True

optimizer_name = "muon"
learning_rate = 1.6e-2
