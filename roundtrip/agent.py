"""The per-layer pruning agent of Huang et al. (WACV 2018) and its REINFORCE training.

An agent looks at one channel group's filters and outputs a keep probability per filter. Its
logit for filter i is a small MLP shared by all filters, applied to features of that filter's
weights, plus a free per-filter offset: the MLP generalises across filters that look alike (weak
filters go together), the offset lets a few episodes single out individual filters. The agent
never sees the data; it learns from the reward of the prunings it proposes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from onnx import numpy_helper
from torch import nn

from onnxprune.graphops.dependency import DependencyGraph

# Evaluates one proposed keep mask (bool per filter): returns the reward.
RewardOf = Callable[[np.ndarray], float]
EpisodeProgress = Callable[[int, int, float], None]  # (episode, episodes, mean reward)
_EPS = 1e-8


def filter_features(dep: DependencyGraph, group_id: str) -> np.ndarray:
    """Per channel of the group: log L1 and L2 norms, std, max |w|, |mean| of its filters, each
    relative to the layer's mean, averaged over the producers that write the channel (a coupled
    group has several), then standardised across the group's channels."""
    index = dep.group_index(group_id)
    channels = dep.groups[index].channels
    weights = {init.name: init for init in dep.model.graph.initializer}
    totals, counts = np.zeros((channels, 5)), np.zeros(channels)
    for producer in dep.producers:
        if producer.weight not in weights:
            continue
        groups, classes = dep.classes_of(producer.atoms)
        where = groups == index
        if not where.any():
            continue
        signed = producer.filters(numpy_helper.to_array(weights[producer.weight])).astype(np.float64)
        flat = np.abs(signed)
        stats = np.stack(
            [flat.sum(1), np.sqrt((flat**2).sum(1)), signed.std(1), flat.max(1), np.abs(signed.mean(1))], 1
        )
        stats = np.log(stats / (stats.mean(0, keepdims=True) + _EPS) + _EPS)
        np.add.at(totals, classes[where], stats[where])
        np.add.at(counts, classes[where], 1)
    features = totals / np.maximum(counts, 1)[:, None]
    standardised: np.ndarray = (features - features.mean(0)) / (features.std(0) + 1e-6)
    return standardised


class PruningAgent(nn.Module):
    """Keep probability per filter: sigmoid(MLP(features_i) + offset_i)."""

    def __init__(self, features: np.ndarray, *, hidden: int = 16, initial_keep: float = 0.9, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.features = torch.as_tensor(features, dtype=torch.float32)
        self.hidden = nn.Linear(self.features.shape[1], hidden)
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():
            for layer in (self.hidden, self.out):
                layer.weight.normal_(0.0, 1.0 / math.sqrt(layer.weight.shape[1]), generator=generator)
                layer.bias.zero_()
            self.out.weight.mul_(0.1)  # start near the same probability for every filter
            self.out.bias.fill_(math.log(initial_keep / (1 - initial_keep)))
        self.offset = nn.Parameter(torch.zeros(len(self.features)))

    def logits(self) -> torch.Tensor:
        scores: torch.Tensor = self.out(torch.tanh(self.hidden(self.features)))
        return scores.squeeze(1) + self.offset

    def keep_probabilities(self) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(self.logits()).numpy().astype(np.float64)


@dataclass
class AgentTraining:
    rewards: list[float]  # mean sampled reward per episode: the reward curve
    best_mask: np.ndarray  # the best sampled action (for the report's diagnostics)
    best_reward: float


def train_agent(
    agent: PruningAgent,
    reward_of: RewardOf,
    *,
    episodes: int,
    samples: int,
    pinned: np.ndarray,
    lr: float = 0.1,
    seed: int = 0,
    progress: EpisodeProgress | None = None,
    deadline: float | None = None,
) -> AgentTraining:
    """REINFORCE with a baseline: each episode samples ``samples`` keep masks from the agent,
    rewards each, and follows the gradient of sum (R - baseline) log pi(A). The baseline is the
    episode's mean reward and advantages are divided by their spread, so the step size does not
    depend on the reward's scale (psi grows without bound when the drop exceeds the budget).
    ``deadline`` (``time.monotonic()``): no episode starts after it (the first always runs)."""
    optimizer = torch.optim.Adam(agent.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    pinned_t = torch.as_tensor(pinned, dtype=torch.bool)
    curve: list[float] = []
    best_mask, best_reward = np.ones(len(pinned), dtype=bool), -math.inf
    for episode in range(episodes):
        logits = agent.logits()
        probabilities = torch.sigmoid(logits).detach()
        actions = torch.bernoulli(probabilities.expand(samples, -1).contiguous(), generator=generator).bool() | pinned_t
        rewards = []
        for action in actions:
            mask = action.numpy().copy()
            if not mask.any():
                mask[int(np.argmax(probabilities.numpy()))] = True  # a layer keeps at least one filter
            rewards.append(reward_of(mask))
            if rewards[-1] > best_reward:
                best_mask, best_reward = mask, rewards[-1]
        reward_t = torch.tensor(rewards, dtype=torch.float32)
        advantage = reward_t - reward_t.mean()
        advantage = advantage / (advantage.std(unbiased=False) + 1e-6)
        free = ~pinned_t
        log_prob = torch.where(actions, nn.functional.logsigmoid(logits), nn.functional.logsigmoid(-logits))
        loss = -(advantage[:, None] * log_prob * free).sum(1).mean()
        optimizer.zero_grad()
        torch.autograd.backward(loss)  # loss.backward(), which torch leaves unannotated
        optimizer.step()
        curve.append(float(reward_t.mean()))
        if progress is not None:
            progress(episode + 1, episodes, curve[-1])
        if deadline is not None and time.monotonic() > deadline:
            break
    return AgentTraining(curve, best_mask, best_reward)
