"""Attribution: one verb, ``attribute(model, images, target=None, method=...)``, over a registry.

Methods (``METHODS.names()``), each documented in its function:

=====================  ==========================================  ====================
method                 what                                        map
=====================  ==========================================  ====================
saliency               |gradient| (captum default)                 sum over channels
input_x_gradient       input x gradient                            sum over channels
integrated_gradients   captum IG, zero baseline, ``n_steps=32``    sum over channels
smoothgrad             NoiseTunnel over saliency / IG              sum over channels
gradient_shap          captum GradientShap, zeros+blur baselines   sum over channels
deeplift               captum DeepLift (CNNs; ViTs raise)          sum over channels
occlusion              window H/8, stride H/16                     channel mean
feature_ablation       SLIC superpixels, ~8x8 px                   channel mean
shap_partition         shap Partition, blur masker, 500 evals      sum over channels
shap_gradient          shap GradientExplainer                      sum over channels
gradcam                Grad-CAM, size-adaptive layer; ViT tokens   >= 0, upsampled
hirescam               HiResCAM (per-position gradient x act.)     >= 0, upsampled
layercam               LayerCAM (positive gradients per position)  >= 0, upsampled
cam_fusion             LayerCAM of 3 stages fused (max / mean)     [0, 1]
rise                   RISE, 1000 random 8x8 masks, blur fill      >= 0 (probability)
xrai                   XRAI-style ranking of Felzenszwalb regions  region density
attention_rollout      rollout of CLS attention (ViT)              >= 0, upsampled
chefer                 Chefer et al. 2021 relevance (ViT)          >= 0, upsampled
lrp                    LRP via zennit (ResNets, VGG-style CNNs)    sum over channels
=====================  ==========================================  ====================

Add a method with ``@register_method("name")`` on ``fn(model, images, target, **kw)`` returning a
raw ``(B, C, H, W)`` tensor, a ``(B, H, W)`` map, or a :class:`MethodOutput`.

Examples:
    >>> import timm, torch
    >>> m = timm.create_model("resnet18", num_classes=2, in_chans=1, pretrained=False)
    >>> a = attribute(m, torch.rand(2, 1, 64, 64), method="gradcam")
    >>> a.params["layer"], tuple(a.maps.shape)
    ('layer2', (2, 64, 64))
"""
from __future__ import annotations

from . import methods_attention, methods_cam, methods_captum, methods_lrp, methods_region, methods_shap  # noqa: F401
from ._core import METHODS, Attribution, MethodOutput, attribute, normalise, register_method, select_target
from .baselines import BaselineSet, baseline_set
from .recommend import Recommendation, recommend
from .methods_cam import default_cam_layer
from .methods_captum import baseline_like, default_window, slic_segments

__all__ = [
    "METHODS", "Attribution", "MethodOutput", "attribute", "normalise", "register_method", "select_target",
    "default_cam_layer", "baseline_like", "default_window", "slic_segments", "BaselineSet", "baseline_set",
    "Recommendation", "recommend",
]
