# train_hf.py's tiny run: the GPT of config/parts/tiny.py (4 layers, width 128, context 64) as a transformers
# GPT2LMHeadModel with Sophia-G, on the embedded stdlib corpus, byte-level: offline, seconds on a laptop CPU.
# 100 steps = 10 Hessian refreshes; the same model, data, batch and schedule as config/train_tiny_sophiag.py.
#   python train_hf.py config/train_hf_tiny_sophiag.py --max_steps=30 --logging_steps=1 --output_dir=out-hf-tiny
#   torchrun --standalone --nproc_per_node=2 train_hf.py config/train_hf_tiny_sophiag.py --gradient_accumulation_steps=1
dataset = "stdlib"
tokenizer = "bytes"                # vocab 257, padded to 320
max_bytes = 3000000                # the first 3 MB of documents (as data/stdlib/prepare.py --max_bytes=3000000)
max_eval_samples = 160             # 160 val sequences (train.py's tiny: eval_iters 20 x batch 8)

n_layer = 4
n_head = 4
n_embd = 128
block_size = 64

optimizer_name = "sophiag"
learning_rate = 2e-3
hess_interval = 10
hess_total_bs = 4                  # the Hessian pass on 4 sequences (train.py's tiny config does the same)

per_device_train_batch_size = 8    # 16 sequences = 1,024 tokens per optimizer step: Sophia's bs
gradient_accumulation_steps = 2

max_steps = 100
warmup_steps = 10

output_dir = "out-hf-tiny-sophiag"
run_name = "hf-tiny-sophiag"
logging_steps = 10
eval_steps = 50
save_steps = 50
