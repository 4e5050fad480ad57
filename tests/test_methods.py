"""The methods against someone else's code, and against what their papers say.

Where torchdistill (a test-only dependency) has the method, our loss and its loss get the same
tensors and must give the same value and the same gradients. Where it has none (DKD, NST), or for
what its classes leave out, the tests check properties that follow from the papers:
- DKD (Zhao et al., Eq. 1-3): KD's KL = TCKD + (1 - p_t) NCKD for each image, where p_t is the
  teacher's probability of the target class; so its two terms are KD's KL split in two.
- DKD's warm-up scales the distillation term by epoch / warmup until it reaches 1.
- NST, AT, SP, RKD, PKT and DIST are zero when the student's features are the teacher's.
- Logit standardisation makes KD blind to the scale and shift of either side's logits.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torchdistill.losses import mid_level as td

from pipeline import adapters, losses
from pipeline.methods import contrastive
from pipeline.methods.base import Context
from pipeline.models import Outputs

B, C = 8, 10  # images, classes
LAYERS = {"student_layer": "s", "teacher_layer": "t"}
MANY = {"student_layers": ["s"], "teacher_layers": ["t"]}


def ctx(epoch: int = 1, rows: int = B, dataset: int = B) -> Context:
    return Context(epoch=epoch, indices=torch.arange(rows), num_classes=C, dataset_size=dataset)


def sides(student_feature=None, teacher_feature=None, seed=0):
    """Student outputs that need gradients, teacher outputs that do not, and labels."""
    g = torch.Generator().manual_seed(seed)
    s_logits = torch.randn(B, C, generator=g).requires_grad_()
    t_logits = torch.randn(B, C, generator=g) * 3
    s_feat = (
        student_feature if student_feature is not None else torch.randn(B, 4, 4, 4, generator=g)
    )
    s_feat = s_feat.clone().requires_grad_()
    t_feat = (
        teacher_feature if teacher_feature is not None else torch.randn(B, 6, 4, 4, generator=g)
    )
    labels = torch.randint(0, C, (B,), generator=g)
    return Outputs(s_logits, {"s": s_feat}), Outputs(t_logits, {"t": t_feat}), labels


def ours(name, params, student, teacher, labels, parts=None, context=None):
    return losses.bind(name, params)(student, teacher, labels, parts, context or ctx())


def io(module: str, tensor, kind="output"):
    return {module: {kind: tensor}}


def assert_same(term: torch.Tensor, reference: torch.Tensor, inputs: list[torch.Tensor]):
    """Equal values and equal gradients with respect to `inputs`."""
    assert term.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-7)
    mine = torch.autograd.grad(term, inputs, retain_graph=True)
    theirs = torch.autograd.grad(reference, inputs, retain_graph=True)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


# -- against torchdistill


def test_kd_equals_torchdistills():
    student, teacher, labels = sides()
    terms = ours("kd", {"temperature": 4.0}, student, teacher, labels)
    ref = td.KDLoss("fc", "output", "fc", "output", temperature=4.0, alpha=0.1, beta=0.9)
    theirs = ref(io("fc", student.logits), io("fc", teacher.logits), labels)
    assert_same(terms["loss"], theirs, [student.logits])


def test_logit_standardised_kd_equals_torchdistills():
    student, teacher, labels = sides()
    terms = ours("kd", {"temperature": 2.0, "standardize": True}, student, teacher, labels)
    ref = td.LogitStdKDLoss("fc", "output", "fc", "output", temperature=2.0, alpha=0.1, beta=0.9)
    theirs = ref(io("fc", student.logits), io("fc", teacher.logits), labels)
    assert_same(terms["loss"], theirs, [student.logits])


def test_dist_equals_torchdistills():
    student, teacher, labels = sides()
    terms = ours("dist", {}, student, teacher, labels)  # beta = gamma = 2, tau = 4
    ref = td.DISTLoss("fc", "output", "fc", "output", beta=2.0, gamma=2.0, tau=4.0)
    theirs = ref(io("fc", student.logits), io("fc", teacher.logits))
    assert_same(terms["loss"] - terms["ce"], theirs, [student.logits])


def test_at_equals_torchdistills_code_mode():
    student, teacher, labels = sides()
    terms = ours("at", MANY, student, teacher, labels)
    pair = {
        "p": {"student": {"io": "output", "path": "s"}, "teacher": {"io": "output", "path": "t"}}
    }
    theirs = td.ATLoss(pair, mode="code")(
        io("s", student.features["s"]), io("t", teacher.features["t"])
    )
    assert_same(terms["at"], theirs, [student.features["s"]])


def test_pkt_equals_torchdistills():
    student, teacher, labels = sides(torch.randn(B, 16), torch.randn(B, 24))
    terms = ours("pkt", LAYERS, student, teacher, labels)
    theirs = td.PKTLoss("s", "output", "t", "output")(io("s", student.features["s"]),
                                                      io("t", teacher.features["t"]))  # fmt: skip
    assert_same(terms["pkt"], theirs, [student.features["s"]])


def test_sp_equals_torchdistills_with_the_papers_l2_rows(monkeypatch):
    # The paper normalises each row of the batch's Gram matrix by its L2 norm (Tung and Mori,
    # Eq. 2; RepDistiller does too). torchdistill 1.1 calls normalize(G, 1), which passes 1 as the
    # norm's order: L1 rows. With its normalize made L2, it must give our value.
    monkeypatch.setattr(td, "normalize", lambda x, *_: F.normalize(x, p=2.0, dim=1))
    student, teacher, labels = sides()
    terms = ours("sp", LAYERS, student, teacher, labels)
    theirs = td.SPKDLoss("s", "t", reduction="batchmean")(io("s", student.features["s"]),
                                                          io("t", teacher.features["t"]))  # fmt: skip
    assert_same(terms["sp"], theirs, [student.features["s"]])


def test_rkd_equals_torchdistills():
    student, teacher, labels = sides(torch.randn(B, 16), torch.randn(B, 24))
    terms = ours("rkd", LAYERS, student, teacher, labels)
    ref = td.RKDLoss("s", "t", dist_factor=25.0, angle_factor=50.0, reduction="mean")
    theirs = ref(io("s", student.features["s"]), io("t", teacher.features["t"]))
    assert_same(25.0 * terms["rkd_distance"] + 50.0 * terms["rkd_angle"], theirs,
                [student.features["s"]])  # fmt: skip


def test_vid_equals_torchdistills_on_the_same_prediction():
    student, teacher, labels = sides()
    shapes = {"student_layers": [torch.Size([4, 4, 4])], "teacher_layers": [torch.Size([6, 4, 4])]}
    parts = losses.get("vid").make_parts(
        losses.PartsInput(shapes, {"init_variance": 5.0}, B, "vid")
    )
    terms = ours("vid", MANY, student, teacher, labels, parts)
    mean, variance = parts[0](student.features["s"])
    pair = {
        "p": {"student": {"io": "output", "path": "s"}, "teacher": {"io": "output", "path": "t"}}
    }
    theirs = td.VIDLoss(pair)(io("s", (mean, variance)), io("t", teacher.features["t"]))
    assert_same(terms["vid"], theirs, [student.features["s"], parts[0].raw_variance])
    assert variance.flatten()[0].item() == pytest.approx(5.0, rel=1e-4)  # starts at init_variance


def test_crd_equals_torchdistills_on_the_same_memory_and_negatives():
    torch.manual_seed(0)
    n, k, dim = 50, 12, 16
    parts = contrastive.CRDParts(student_dim=20, teacher_dim=30, dim=dim, dataset_size=n)
    ref = td.CRDLoss("s", "empty", "t", input_size=dim, output_size=n, num_negative_samples=k,
                     num_samples=n, temperature=0.07, momentum=0.5)  # fmt: skip
    ref.memory_v1.copy_(parts.student_memory)  # its v1 is the student's bank, v2 the teacher's
    ref.memory_v2.copy_(parts.teacher_memory)
    s, t = torch.randn(B, 20, requires_grad=True), torch.randn(B, 30)
    indices = torch.randperm(n)[:B]
    contrast = torch.cat([indices[:, None], torch.randint(0, n, (B, k))], dim=1)
    for _ in range(2):  # the second step reads the banks that the first one moved
        e_s, e_t = parts.embed(s, t)
        mine = contrastive.contrast_loss(e_s, e_t, contrast, parts, 0.07, n)
        theirs = ref({"s": {"output": e_s}, "empty": {"input": {"pos_idx": indices,
                                                                 "contrast_idx": contrast}}},
                     {"t": {"output": e_t}})  # fmt: skip
        assert_same(mine, theirs, [s, parts.student_head.weight, parts.teacher_head.weight])
        parts.remember(indices, e_s, e_t, 0.5)
        torch.testing.assert_close(parts.student_memory, ref.memory_v1)
        torch.testing.assert_close(parts.teacher_memory, ref.memory_v2)


# -- properties from the papers


@pytest.mark.parametrize("seed", range(5))
def test_dkd_splits_kds_kl_into_its_two_parts(seed):
    for row in range(B):  # per image: KD = TCKD + (1 - p_t) NCKD
        student, teacher, labels = sides(seed=seed)
        rows = slice(row, row + 1)
        student, teacher = Outputs(student.logits[rows], {}), Outputs(teacher.logits[rows], {})
        labels = labels[rows]
        context = ctx(rows=1, dataset=1)
        dkd = ours("dkd", {"alpha": 1.0, "beta": 1.0, "warmup": 0}, student, teacher, labels,
                   context=context)  # fmt: skip
        kd = ours("kd", {"temperature": 4.0}, student, teacher, labels, context=context)
        p_target = F.softmax(teacher.logits / 4.0, dim=1)[0, labels[0]]
        split = dkd["tckd"] + (1 - p_target) * dkd["nckd"]
        assert split.item() == pytest.approx(kd["kd"].item(), rel=1e-5)


def test_dkd_warms_up_linearly_then_holds():
    student, teacher, labels = sides()
    distill = []
    for epoch in (1, 10, 20, 40):
        terms = ours("dkd", {"warmup": 20}, student, teacher, labels, context=ctx(epoch=epoch))
        distill.append((terms["loss"] - terms["ce"]).item())
    full = distill[-1]
    assert distill == pytest.approx([full / 20, full / 2, full, full], rel=1e-5)


@pytest.mark.parametrize(("name", "term"), [("at", "at"), ("nst", "nst"), ("sp", "sp"),
                                            ("pkt", "pkt"), ("rkd", "rkd_distance"),
                                            ("rkd", "rkd_angle")])  # fmt: skip
def test_a_feature_method_is_zero_when_the_student_has_the_teachers_features(name, term):
    feature = torch.randn(B, 6, 4, 4)
    student, teacher, labels = sides(feature, feature)
    params = MANY if losses.many_layers(name, losses.layers(name)[0]) else LAYERS
    assert ours(name, params, student, teacher, labels)[term].item() == pytest.approx(0, abs=1e-6)


def test_nst_is_positive_for_different_maps_and_ignores_the_channel_counts():
    student, teacher, labels = sides()  # 4 channels against 6
    assert ours("nst", MANY, student, teacher, labels)["nst"].item() > 1e-4


def test_dist_is_zero_when_the_student_predicts_as_the_teacher():
    _, teacher, labels = sides()
    same = Outputs(teacher.logits.clone().requires_grad_(), {})
    terms = ours("dist", {}, same, teacher, labels)
    assert (terms["inter"].item(), terms["intra"].item()) == pytest.approx((0, 0), abs=1e-6)


def test_standardised_kd_ignores_the_scale_and_shift_of_the_logits():
    student, teacher, labels = sides()
    params = {"temperature": 2.0, "standardize": True}
    base = ours("kd", params, student, teacher, labels)["kd"].item()
    moved = Outputs(teacher.logits * 7 + 3, {})
    assert ours("kd", params, student, moved, labels)["kd"].item() == pytest.approx(base, rel=1e-5)
    plain = ours("kd", {"temperature": 2.0}, student, moved, labels)["kd"].item()
    assert not math.isclose(plain, base, rel_tol=1e-3)  # without the switch it does not


def test_crd_moves_only_the_batchs_rows_of_the_memory_and_sets_z_once():
    torch.manual_seed(0)
    parts = contrastive.CRDParts(student_dim=16, teacher_dim=24, dim=8, dataset_size=20)
    before = parts.student_memory.clone()
    student, teacher, labels = sides(torch.randn(B, 16), torch.randn(B, 24))
    rows = torch.arange(4, 4 + B)
    context = Context(epoch=1, indices=rows, num_classes=C, dataset_size=20)
    ours("crd", {**LAYERS, "dim": 8, "negatives": 5}, student, teacher, labels, parts, context)
    moved = (parts.student_memory != before).any(dim=1)
    assert moved.nonzero().flatten().tolist() == rows.tolist()
    z = parts.z.clone()
    assert (z > 0).all()
    ours("crd", {**LAYERS, "dim": 8, "negatives": 5}, student, teacher, labels, parts, context)
    assert torch.equal(parts.z, z)  # the normalising constants stay those of the first batch


def test_a_map_method_refuses_a_flat_layer_by_its_key():
    shapes = {"student_layers": [torch.Size([16, 8, 8])], "teacher_layers": [torch.Size([512])]}
    with pytest.raises(Exception, match=r"variants\.at\.teacher_layers\[0\]: the layer gives 512 "
                                        r"per image, and at needs C x H x W"):  # fmt: skip
        adapters.check_maps(shapes, "variants.at", "at")
