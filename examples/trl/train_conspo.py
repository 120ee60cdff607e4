"""ConSPO on TRL with any accelerate launcher (DDP, DeepSpeed ZeRO-2/3, FSDP), optionally with vLLM.

    accelerate launch --config_file examples/trl/ddp.yaml examples/trl/train_conspo.py \
        --model Qwen/Qwen2.5-Math-1.5B --output-dir runs/trl-conspo

Rewards: math-verify via conspo.rewards.MathVerifier on MATH (train) problems from the shared
data folder (or any JSONL with problem/answer fields). The policy loss is ConSPO
(conspo.integrations.trl.ConSPOTrainer); everything else is TRL's GRPOTrainer.
"""

import argparse

from datasets import Dataset

from conspo.integrations.trl import ConSPOConfig, ConSPOTrainer
from conspo.rewards import MathVerifier
from conspo.tasks.data import load_problem_set
from conspo.tasks.math_data import build_prompt


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Qwen/Qwen2.5-Math-1.5B")
    p.add_argument("--train-data", default="math_train", help="shared set short name or JSONL path")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output-dir", default="runs/trl-conspo")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--per-device-batch", type=int, default=16, help="rows per device per micro-batch")
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=3072)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--tau", type=float, default=0.3)
    p.add_argument("--margin-schedule", default="constant")
    p.add_argument("--margin-end", type=float, default=0.0)
    p.add_argument("--group-mode", default="auto", choices=["auto", "whole", "coefficients"])
    p.add_argument("--use-vllm", action="store_true")
    p.add_argument("--vllm-mode", default="colocate", choices=["colocate", "server"])
    args = p.parse_args()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    examples = load_problem_set(
        args.train_data, args.data_dir, split="train"
    )  # a short name or a path, as conspo train
    prompts = {build_prompt(e, "qwen_math_boxed", tokenizer): e.answer for e in examples}
    dataset = Dataset.from_dict({"prompt": list(prompts), "answer": list(prompts.values())})
    verifier = MathVerifier(timeout_s=5.0)

    def math_reward(prompts, completions, answer, **kwargs):
        return verifier.score(completions, answer).scores

    config = ConSPOConfig(
        output_dir=args.output_dir,
        num_generations=args.num_generations,
        per_device_train_batch_size=args.per_device_batch,
        gradient_accumulation_steps=args.grad_accum,
        max_completion_length=args.max_completion_length,
        learning_rate=args.lr,
        max_steps=args.max_steps,
        bf16=True,
        gradient_checkpointing=True,
        beta=0.0,
        logging_steps=1,
        save_steps=100,
        tau=args.tau,
        margin_schedule=args.margin_schedule,
        margin_end=args.margin_end,
        group_mode=args.group_mode,
        use_vllm=args.use_vllm,
        vllm_mode=args.vllm_mode,
        temperature=1.0,
    )
    trainer = ConSPOTrainer(
        model=args.model, reward_funcs=math_reward, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    verifier.close()


if __name__ == "__main__":
    main()
