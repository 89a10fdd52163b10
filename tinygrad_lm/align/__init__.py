"""Instruction tuning and RLHF on the one training loop: the built-in task and the data formats.

- ``tasks``: five instruction families with checkable answers (reverse, sort, uppercase, add,
  count), train/validation/test splits that never share a prompt, ``is_correct`` and a scripted
  ``judge`` that stands in for human raters;
- ``jsonl``: JSON Lines datasets with TRL's field names (SFT, preference pairs, RL prompts);
- ``sft``: conversations through the chat template with the loss on the assistant's tokens only
  (``SFTData``, a batch source for the Trainer; ``tinygrad-lm sft``);
- ``losses`` and ``heads``: Bradley-Terry, DPO, GAE, PPO's clipped losses, KL estimators and
  controllers, summed completion log-probs; the scalar (reward / value) head."""
from .jsonl import KINDS, ROLES, normalize, read_jsonl, sft_records, write_jsonl
from .sft import SFTData, chat_template_of, encode_conversation, examples_to_conversations
from .tasks import (FAMILIES, SPLITS, answer, edit_distance, family_of, is_correct, judge, make_example,
                    make_prompt, random_word, split_of, task_split)

__all__ = ["FAMILIES", "SPLITS", "make_example", "make_prompt", "random_word", "answer", "family_of",
           "is_correct", "edit_distance", "judge", "split_of", "task_split",
           "KINDS", "ROLES", "read_jsonl", "write_jsonl", "normalize", "sft_records",
           "SFTData", "chat_template_of", "encode_conversation", "examples_to_conversations"]

# the reward model: a scalar head on the last token, Bradley-Terry, the judge's pairs (`tinygrad-lm reward`)
from .reward import RewardModel, evaluate_reward_model, judge_pairs, render_reply, sample_replies  # noqa: E402

__all__ += ["RewardModel", "evaluate_reward_model", "judge_pairs", "render_reply", "sample_replies"]

# DPO: the policy against a frozen reference on preference pairs (`tinygrad-lm dpo`)
from .dpo import DPOModel, evaluate_pairs, task_preference_pairs  # noqa: E402

__all__ += ["DPOModel", "evaluate_pairs", "task_preference_pairs"]

# scoring a chat model on the built-in task (`tinygrad-lm eval --task builtin`)
from .evaluate import reply, task_accuracy  # noqa: E402

__all__ += ["reply", "task_accuracy"]
