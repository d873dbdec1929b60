"""Concept bottlenecks: train, explain, intervene, and repair a new site without training.

Concept models (Koh et al. 2020) over any backbone of ``wb.models.create``, trained by ``wb.fit``; a
concept model is an ``nn.Module`` whose ``forward`` returns class logits, so evaluation, attribution
and pruning work on it unchanged.

=============================  =====================================================================
verb                           what
=============================  =====================================================================
``create``                     a CBM (joint, sequential, independent; linear, sparse or MLP head)
``posthoc``                    a post-hoc CBM over a frozen model's features projected on CAVs
``predict`` / ``intervene``    concept and class probabilities, contributions; set concepts
``intervention_curve``         accuracy/AUC vs concepts corrected (random, uncertainty, expected change)
``concept_maps``               where each concept is evidenced (ViT tokens, Grad-CAM), scored vs masks
``quality``                    concept AUCs, task AUC, completeness, leakage, head sparsity
``learn_cavs`` / ``tcav``      CAVs at any layer (images or structure masks); TCAV with its t-test
``concept_examples``           example images of concepts from a dataset's labels and meta flags
``test_time_improve``          training-free repair at a new site (after He et al. 2025)
``test_time_normalise``        training-free: normalisation statistics from each batch, mixed with the source's
``test_time_align``            training-free: a new site's field of view, contrast, brightness, gamma undone
``finetune_head``              the gradient baseline: the task head retrained on the support set
``fit_head``                   the task head fitted to convergence on true (independent) or predicted concepts
``support_set``                a few labelled images per class drawn from a new site
``concept_source``             the adapter over concept sources: labels, CAVs, text (CLIP), SAE
=============================  =====================================================================

Examples:
    >>> import torch, workbench as wb
    >>> cbm = wb.concepts.create("vit_tiny", concepts=["nodule", "effusion"], num_classes=3, img_size=32,
    ...                          in_chans=1, patch_size=8, depth=2, embed_dim=32, num_heads=2)
    >>> p = wb.concepts.intervene(cbm, torch.rand(2, 1, 32, 32), {"nodule": 1.0})
    >>> p.concepts[:, 0].tolist(), tuple(p.probs.shape)
    ([1.0, 1.0], (2, 3))
"""
from __future__ import annotations

from ._model import ConceptBottleneck, calibrate_, create, from_config, posthoc
from ._predict import ConceptPrediction, intervene, predict
from .head import fit_head
from .cav import CAVSet, TCAVResult, concept_examples, layer_activations, learn_cavs, random_images, tcav
from .interventions import ORDERS, InterventionCurve, intervention_curve
from .maps import ConceptMaps, concept_maps, score_concept_maps
from .quality import ConceptReport, quality
from .sources import (SOURCES, CAVConcepts, LabelConcepts, SAEConcepts, TextConcepts, concept_source,
                      select_concepts, with_concepts)
from .align import test_time_align
from .normalise import test_time_normalise
from .tti import TTIReport, finetune_head, support_set, test_time_improve

__all__ = [
    "ConceptBottleneck", "create", "posthoc", "from_config", "calibrate_",
    "ConceptPrediction", "predict", "intervene",
    "InterventionCurve", "intervention_curve", "ORDERS",
    "ConceptMaps", "concept_maps", "score_concept_maps",
    "ConceptReport", "quality",
    "CAVSet", "TCAVResult", "learn_cavs", "tcav", "layer_activations", "concept_examples", "random_images",
    "TTIReport", "test_time_improve", "test_time_normalise", "test_time_align", "finetune_head", "support_set", "fit_head",
    "SOURCES", "concept_source", "LabelConcepts", "CAVConcepts", "TextConcepts", "SAEConcepts", "select_concepts", "with_concepts",
]
