"""Stage 3, train: one LoRA/QLoRA training run, and predictions of what it will cost.

    loop.py         the run: build it (data, weights, LoRA, optimizer), the training loop, checkpoints, resume
    steps.py        what a step needs: the completion loss, optimizer, autocast, checkpoint files, early stopping
    batching.py     token-budget batches without padding to a fixed length
    lora_kernel.py  --lora-kernel fused: LoRA layers as one autograd function, dropout masks redrawn
    distributed.py  DDP over the adapter only (torchrun / accelerate launch)
    mirrors.py      mirror a run to TensorBoard, W&B, MLflow
    example_nll.py  per-example held-out NLL, for perplexity intervals
    estimate.py     predict peak memory and step time from the model config alone
    predictions.py  train.py --estimate/--probe and the prediction recorded with every run

Imports the core and the data, model and text stages.
"""
