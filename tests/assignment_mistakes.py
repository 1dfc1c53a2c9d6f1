"""Typical wrong answers to the detr_edu exercises (lessons' `nbgrader` solution cells).

`MISTAKES[grade_id]` is a list of `(what goes wrong, code)`. The code is run right after the lesson's own
solution cell, in the same namespace, and overrides the exercise's function(s) (or patches the method);
tests/test_assignments.py checks that the exercise's graded cells then fail. Every exercise has at least two.
"""

MISTAKES = {
"padding_mask": [
("inverted padding mask (True on the real pixels)", '''
_ok = nested_tensor_from_tensor_list
def nested_tensor_from_tensor_list(tensor_list, size_divisibility=0):
    nt = _ok(tensor_list, size_divisibility)
    return NestedTensor(nt.tensors, ~nt.mask)
'''),
("image pasted in the bottom-right corner", '''
def nested_tensor_from_tensor_list(tensor_list, size_divisibility=0):
    images = list(tensor_list)
    C, H, W = images[0].shape[0], max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    if size_divisibility: H, W = -(-H // size_divisibility) * size_divisibility, -(-W // size_divisibility) * size_divisibility
    t = images[0].new_zeros((len(images), C, H, W)); m = torch.ones(len(images), H, W, dtype=torch.bool)
    for b, img in enumerate(images):
        h, w = img.shape[1:]; t[b, :, H - h:, W - w:] = img; m[b, H - h:, W - w:] = False
    return NestedTensor(t, m)
'''),
("size rounded down instead of up to size_divisibility", '''
_ok = nested_tensor_from_tensor_list
def nested_tensor_from_tensor_list(tensor_list, size_divisibility=0):
    nt = _ok(tensor_list, 0)
    if size_divisibility:
        H, W = nt.tensors.shape[-2:]
        H, W = max(H // size_divisibility, 1) * size_divisibility, max(W // size_divisibility, 1) * size_divisibility
        return NestedTensor(nt.tensors[..., :H, :W], nt.mask[..., :H, :W])
    return nt
'''),
("padding filled with ones (torch.ones canvas)", '''
_ok = nested_tensor_from_tensor_list
def nested_tensor_from_tensor_list(tensor_list, size_divisibility=0):
    nt = _ok(tensor_list, size_divisibility)
    return NestedTensor(nt.tensors.masked_fill(nt.mask[:, None], 1), nt.mask)
'''),
],
"box_convert": [
("full width instead of half width", '''
def box_cxcywh_to_xyxy(x):
    cx, cy, w, h = x.unbind(-1)
    return torch.stack([cx - w, cy - h, cx + w, cy + h], -1)
'''),
("(x0, x1, y0, y1) order", '''
def box_cxcywh_to_xyxy(x):
    cx, cy, w, h = x.unbind(-1)
    return torch.stack([cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2], -1)
'''),
("no input check", '''
def box_xyxy_to_cxcywh(x):
    x = torch.as_tensor(x, dtype=torch.float32)
    x0, y0, x1, y1 = x.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)
'''),
],
"box_area": [
("width + height", '''
def box_area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) + (boxes[..., 3] - boxes[..., 1])
'''),
("boxes read as cxcywh (w * h = entries 2, 3)", '''
def box_area(boxes):
    return boxes[..., 2] * boxes[..., 3]
'''),
("flattens the leading dims", '''
def box_area(boxes):
    b = boxes.reshape(-1, 4)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
'''),
],
"box_iou": [
("union without subtracting the intersection", '''
def box_iou(boxes1, boxes2):
    _check_boxes(boxes1, "boxes1", "box_iou"); _check_boxes(boxes2, "boxes2", "box_iou")
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2]); rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0); inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :]
    return _safe_div(inter, union), union
'''),
("overlap not clamped at 0 (disjoint boxes get a positive 'intersection')", '''
def box_iou(boxes1, boxes2):
    _check_boxes(boxes1, "boxes1", "box_iou"); _check_boxes(boxes2, "boxes2", "box_iou")
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2]); rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = rb - lt; inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return _safe_div(inter, union), union
'''),
("0/0 = NaN for zero-area boxes", '''
def box_iou(boxes1, boxes2):
    _check_boxes(boxes1, "boxes1", "box_iou"); _check_boxes(boxes2, "boxes2", "box_iou")
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2]); rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0); inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return inter / union, union
'''),
("min/max swapped: the enclosing box instead of the overlap", '''
def box_iou(boxes1, boxes2):
    _check_boxes(boxes1, "boxes1", "box_iou"); _check_boxes(boxes2, "boxes2", "box_iou")
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2]); rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0); inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return _safe_div(inter, union), union
'''),
],
"generalized_box_iou": [
("penalty divided by the union instead of the enclosing box", '''
def generalized_box_iou(boxes1, boxes2):
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2]); rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0); c = wh[..., 0] * wh[..., 1]
    return iou - _safe_div(c - union, union)
'''),
("enclosing box computed like the intersection (max/min)", '''
def generalized_box_iou(boxes1, boxes2):
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2]); rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0); c = wh[..., 0] * wh[..., 1]
    return iou - _safe_div(c - union, c)
'''),
("penalty added instead of subtracted", '''
def generalized_box_iou(boxes1, boxes2):
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2]); rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0); c = wh[..., 0] * wh[..., 1]
    return iou + _safe_div(c - union, c)
'''),
],
"sine_frequencies": [
("one frequency per channel (k instead of 2*(k//2))", '''
def sine_frequencies(num_pos_feats, temperature=10000, device=None):
    k = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    return temperature ** (k / num_pos_feats)
'''),
("sines then cosines concatenated, not interleaved", '''
def interleave_sin_cos(angles):
    return torch.cat((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1)
'''),
("cos on the even channels", '''
def interleave_sin_cos(angles):
    return torch.stack((angles[..., 0::2].cos(), angles[..., 1::2].sin()), dim=-1).flatten(-2)
'''),
],
"position_embedding_sine": [
("positions counted over padding too", '''
_ok = PositionEmbeddingSine.forward
def forward(self, tensor_list):
    m = _check_nested(tensor_list, "PositionEmbeddingSine")
    return _ok(self, NestedTensor(tensor_list.tensors, torch.zeros_like(m)))
PositionEmbeddingSine.forward = forward
'''),
("x channels first, y second", '''
_ok = PositionEmbeddingSine.forward
def forward(self, tensor_list):
    p = _ok(self, tensor_list); F2 = p.shape[1] // 2
    return torch.cat([p[:, F2:], p[:, :F2]], 1)
PositionEmbeddingSine.forward = forward
'''),
("normalised by the padded size instead of each image's own size", '''
def forward(self, tensor_list):
    mask = _check_nested(tensor_list, "PositionEmbeddingSine"); not_mask = ~mask
    y = not_mask.cumsum(1, dtype=torch.float32); x = not_mask.cumsum(2, dtype=torch.float32)
    if self.normalize:
        H, W = mask.shape[1:]
        y = (y + self.offset) / H * self.scale; x = (x + self.offset) / W * self.scale
    dim_t = sine_frequencies(self.num_pos_feats, self.temperature)
    return torch.cat((interleave_sin_cos(y[..., None] / dim_t), interleave_sin_cos(x[..., None] / dim_t)), 3).permute(0, 3, 1, 2)
PositionEmbeddingSine.forward = forward
'''),
("the -0.5 pixel offset forgotten", '''
def forward(self, tensor_list):
    mask = _check_nested(tensor_list, "PositionEmbeddingSine"); not_mask = ~mask
    y = not_mask.cumsum(1, dtype=torch.float32); x = not_mask.cumsum(2, dtype=torch.float32)
    if self.normalize:
        y = y / (y[:, -1:, :] + 1e-6) * self.scale; x = x / (x[:, :, -1:] + 1e-6) * self.scale
    dim_t = sine_frequencies(self.num_pos_feats, self.temperature)
    return torch.cat((interleave_sin_cos(y[..., None] / dim_t), interleave_sin_cos(x[..., None] / dim_t)), 3).permute(0, 3, 1, 2)
PositionEmbeddingSine.forward = forward
'''),
],
"frozen_batch_norm": [
("eps forgotten", '''
def forward(self, x):
    scale = self.weight * self.running_var.rsqrt(); bias = self.bias - self.running_mean * scale
    return x * scale[None, :, None, None] + bias[None, :, None, None]
FrozenBatchNorm2d.forward = forward
'''),
("divides by the variance, not the standard deviation", '''
def forward(self, x):
    scale = self.weight / (self.running_var + self.eps); bias = self.bias - self.running_mean * scale
    return x * scale[None, :, None, None] + bias[None, :, None, None]
FrozenBatchNorm2d.forward = forward
'''),
("mean not subtracted", '''
def forward(self, x):
    scale = self.weight * (self.running_var + self.eps).rsqrt()
    return x * scale[None, :, None, None] + self.bias[None, :, None, None]
FrozenBatchNorm2d.forward = forward
'''),
],
"downsample_mask": [
("any padding in the window makes the cell padding (max pooling)", '''
def downsample_mask(mask, size):
    return F.adaptive_max_pool2d(mask[None].float(), tuple(size)).to(torch.bool)[0]
'''),
("bilinear interpolation rounded", '''
def downsample_mask(mask, size):
    return F.interpolate(mask[None].float(), size=tuple(size), mode="bilinear").round().to(torch.bool)[0]
'''),
("returns a float mask", '''
def downsample_mask(mask, size):
    return F.interpolate(mask[None].float(), size=tuple(size))[0]
'''),
],
"scaled_dot_product": [
("softmax over the wrong axis (queries)", '''
def scaled_dot_product(q, k, v, key_padding_mask=None, dropout_p=0.0):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if key_padding_mask is not None: s = s.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    w = s.softmax(dim=-2).nan_to_num(0)
    return w @ v, w
'''),
("not scaled by sqrt(d_h)", '''
def scaled_dot_product(q, k, v, key_padding_mask=None, dropout_p=0.0):
    s = q @ k.transpose(-2, -1)
    if key_padding_mask is not None: s = s.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    w = s.softmax(dim=-1)
    return w @ v, w
'''),
("padding masked with 0 instead of -inf", '''
def scaled_dot_product(q, k, v, key_padding_mask=None, dropout_p=0.0):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if key_padding_mask is not None: s = s.masked_fill(key_padding_mask[:, None, None, :], 0.0)
    w = s.softmax(dim=-1)
    return w @ v, w
'''),
("inverted key padding mask", '''
def scaled_dot_product(q, k, v, key_padding_mask=None, dropout_p=0.0):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if key_padding_mask is not None: s = s.masked_fill(~key_padding_mask[:, None, None, :], -1e9)
    w = s.softmax(dim=-1)
    return w @ v, w
'''),
],
"multi_head_attention": [
("output projection forgotten", '''
def multi_head_attention(query, key, value, nhead, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, key_padding_mask=None):
    wq, wk, wv = in_proj_weight.chunk(3); bq, bk, bv = in_proj_bias.chunk(3)
    o, w = scaled_dot_product(split_heads(F.linear(query, wq, bq), nhead), split_heads(F.linear(key, wk, bk), nhead),
                              split_heads(F.linear(value, wv, bv), nhead), key_padding_mask)
    return merge_heads(o), w
'''),
("the query projection used for keys and values too", '''
def multi_head_attention(query, key, value, nhead, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, key_padding_mask=None):
    wq = in_proj_weight[:query.shape[-1]]; bq = in_proj_bias[:query.shape[-1]]
    o, w = scaled_dot_product(split_heads(F.linear(query, wq, bq), nhead), split_heads(F.linear(key, wq, bq), nhead),
                              split_heads(F.linear(value, wq, bq), nhead), key_padding_mask)
    return F.linear(merge_heads(o), out_proj_weight, out_proj_bias), w
'''),
("heads take interleaved channels instead of contiguous blocks", '''
def multi_head_attention(query, key, value, nhead, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, key_padding_mask=None):
    wq, wk, wv = in_proj_weight.chunk(3); bq, bk, bv = in_proj_bias.chunk(3)
    def bad_split(x):   # head h takes channels h, h + nhead, h + 2 nhead, ... instead of one contiguous block
        L, B, d = x.shape
        return x.reshape(L, B, d // nhead, nhead).permute(1, 3, 0, 2)
    o, w = scaled_dot_product(bad_split(F.linear(query, wq, bq)), bad_split(F.linear(key, wk, bk)),
                              bad_split(F.linear(value, wv, bv)), key_padding_mask)
    return F.linear(merge_heads(o), out_proj_weight, out_proj_bias), w
'''),
],
"post_process": [
("no-object class allowed as a label", '''
_ok = PostProcess.forward
def forward(self, outputs, target_sizes):
    res = _ok(self, outputs, target_sizes)
    prob = outputs["pred_logits"].softmax(-1)
    for r, p in zip(res, prob): r["scores"], r["labels"] = p.max(-1)
    return res
PostProcess.forward = forward
'''),
("boxes scaled by (h, w, h, w) instead of (w, h, w, h)", '''
def forward(self, outputs, target_sizes):
    prob = outputs["pred_logits"].softmax(-1); scores, labels = prob[..., :-1].max(-1)
    boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"]); h, w = target_sizes.unbind(1)
    boxes = boxes * torch.stack([h, w, h, w], 1).to(boxes.dtype)[:, None]
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes)]
PostProcess.forward = forward
'''),
("sigmoid scores instead of softmax", '''
def forward(self, outputs, target_sizes):
    prob = outputs["pred_logits"].sigmoid(); scores, labels = prob[..., :-1].max(-1)
    boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"]); h, w = target_sizes.unbind(1)
    boxes = boxes * torch.stack([w, h, w, h], 1).to(boxes.dtype)[:, None]
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes)]
PostProcess.forward = forward
'''),
("boxes left in cxcywh", '''
def forward(self, outputs, target_sizes):
    prob = outputs["pred_logits"].softmax(-1); scores, labels = prob[..., :-1].max(-1)
    boxes = outputs["pred_boxes"]; h, w = target_sizes.unbind(1)
    boxes = boxes * torch.stack([w, h, w, h], 1).to(boxes.dtype)[:, None]
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes)]
PostProcess.forward = forward
'''),
],
"normalize_boxes": [
("divided by (h, w, h, w)", '''
def normalize_boxes(boxes, height, width):
    return box_xyxy_to_cxcywh(boxes.as_subclass(Tensor).float()) / torch.tensor([height, width, height, width], dtype=torch.float32)
'''),
("normalised but left in xyxy", '''
def normalize_boxes(boxes, height, width):
    return boxes.as_subclass(Tensor).float() / torch.tensor([width, height, width, height], dtype=torch.float32)
'''),
("inverse converts before scaling back (cxcywh of normalised units times size)", '''
def denormalize_boxes(boxes, height, width):
    return box_cxcywh_to_xyxy(boxes.as_subclass(Tensor).float()) * torch.tensor([height, width, height, width], dtype=torch.float32)
'''),
],
"interpolate_pos_embed": [
("patch rows reshaped as (w0, h0): rows and columns mixed up", '''
_ok = interpolate_pos_embed
def interpolate_pos_embed(pos_embed, pe_grid, new_grid, num_det_tokens):
    h0, w0 = pe_grid
    if tuple(pe_grid) == tuple(new_grid): return pos_embed
    S, D = pos_embed.shape[-2:]; lead = pos_embed.shape[:-2]; flat = pos_embed.reshape(-1, S, D)
    g = flat[:, 1:1 + h0 * w0].transpose(1, 2).reshape(-1, D, w0, h0).transpose(-1, -2)
    g = F.interpolate(g, size=tuple(new_grid), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    return torch.cat([flat[:, :1], g, flat[:, 1 + h0 * w0:]], 1).reshape(*lead, -1, D)
'''),
("bilinear instead of bicubic", '''
def interpolate_pos_embed(pos_embed, pe_grid, new_grid, num_det_tokens):
    h0, w0 = pe_grid
    if S_check(pos_embed, pe_grid, num_det_tokens) and tuple(pe_grid) == tuple(new_grid): return pos_embed
    S, D = pos_embed.shape[-2:]; lead = pos_embed.shape[:-2]; flat = pos_embed.reshape(-1, S, D)
    g = flat[:, 1:1 + h0 * w0].transpose(1, 2).reshape(-1, D, h0, w0)
    g = F.interpolate(g, size=tuple(new_grid), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    return torch.cat([flat[:, :1], g, flat[:, 1 + h0 * w0:]], 1).reshape(*lead, -1, D)
def S_check(pos_embed, pe_grid, n):
    if pos_embed.shape[-2] != 1 + pe_grid[0] * pe_grid[1] + n: raise ValueError("pe_grid")
    return True
'''),
("[CLS] and [DET] rows resized with the patches", '''
def interpolate_pos_embed(pos_embed, pe_grid, new_grid, num_det_tokens):
    h0, w0 = pe_grid; h, w = new_grid
    S, D = pos_embed.shape[-2:]
    if S != 1 + h0 * w0 + num_det_tokens: raise ValueError("pe_grid")
    if (h0, w0) == (h, w): return pos_embed
    lead = pos_embed.shape[:-2]; flat = pos_embed.reshape(-1, S, D)
    line = F.interpolate(flat.transpose(1, 2), size=1 + h * w + num_det_tokens, mode="linear", align_corners=False)
    return line.transpose(1, 2).reshape(*lead, -1, D)
'''),
],
"class_cost": [
("softmax over the queries instead of the classes", '''
_ok = class_cost
def class_cost(logits, tgt_ids, focal=False, focal_alpha=0.25, focal_gamma=2.0):
    if focal: return _ok(logits, tgt_ids, True, focal_alpha, focal_gamma)
    cols = tgt_ids.unsqueeze(-2).expand(*logits.shape[:-1], tgt_ids.shape[-1])
    return -logits.softmax(-2).gather(-1, cols)
'''),
("probability as a cost (the minus sign forgotten)", '''
_ok = class_cost
def class_cost(logits, tgt_ids, focal=False, focal_alpha=0.25, focal_gamma=2.0):
    return -_ok(logits, tgt_ids, focal, focal_alpha, focal_gamma)
'''),
("focal cost: the two terms added instead of subtracted", '''
_ok = class_cost
def class_cost(logits, tgt_ids, focal=False, focal_alpha=0.25, focal_gamma=2.0):
    if not focal: return _ok(logits, tgt_ids)
    cols = tgt_ids.unsqueeze(-2).expand(*logits.shape[:-1], tgt_ids.shape[-1])
    p = logits.gather(-1, cols).sigmoid()
    return focal_alpha * (1 - p) ** focal_gamma * -(p + 1e-8).log() + (1 - focal_alpha) * p ** focal_gamma * -(1 - p + 1e-8).log()
'''),
("focal cost: log(0) when p saturates (no 1e-8)", '''
_ok = class_cost
def class_cost(logits, tgt_ids, focal=False, focal_alpha=0.25, focal_gamma=2.0):
    if not focal: return _ok(logits, tgt_ids)
    cols = tgt_ids.unsqueeze(-2).expand(*logits.shape[:-1], tgt_ids.shape[-1])
    p = logits.gather(-1, cols).sigmoid()
    return focal_alpha * (1 - p) ** focal_gamma * -p.log() - (1 - focal_alpha) * p ** focal_gamma * -(1 - p).log()
'''),
],
"box_costs": [
("L2 distance instead of L1", '''
def bbox_cost(pred_boxes, tgt_boxes):
    return (pred_boxes.unsqueeze(-2) - tgt_boxes.unsqueeze(-3)).pow(2).sum(-1).sqrt()
'''),
("GIoU on cxcywh boxes (no conversion to corners)", '''
def giou_cost(pred_boxes, tgt_boxes):
    return -generalized_box_iou(pred_boxes, tgt_boxes)
'''),
("+GIoU as the cost (a reward)", '''
def giou_cost(pred_boxes, tgt_boxes):
    return generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes))
'''),
],
"hungarian_assignment": [
("greedy: each row takes its cheapest free column", '''
def hungarian_assignment(cost, return_steps=False):
    c = np.asarray(cost.detach().cpu().double().numpy() if isinstance(cost, Tensor) else cost, dtype=np.float64)
    if c.ndim != 2: raise ValueError("`cost` must be 2-D")
    if not np.isfinite(c).all(): raise ValueError("`cost` contains NaN")
    tall = c.shape[0] > c.shape[1]
    if tall: c = c.T
    taken, cols = set(), []
    for i in range(c.shape[0]):
        j = min((j for j in range(c.shape[1]) if j not in taken), key=lambda j: c[i, j]); taken.add(j); cols.append(j)
    r, k = np.arange(c.shape[0], dtype=np.int64), np.array(cols, dtype=np.int64)
    if tall: o = np.argsort(k); r, k = k[o], r[o]
    return r, k
'''),
("maximises the total instead of minimising it", '''
from scipy.optimize import linear_sum_assignment as _lsa
def hungarian_assignment(cost, return_steps=False):
    c = np.asarray(cost.detach().cpu().double().numpy() if isinstance(cost, Tensor) else cost, dtype=np.float64)
    if c.ndim != 2: raise ValueError("`cost` must be 2-D")
    if not np.isfinite(c).all(): raise ValueError("`cost` contains NaN")
    r, k = _lsa(-c)
    return r.astype(np.int64), k.astype(np.int64)
'''),
("tall matrices: the transposed answer returned without swapping rows and columns back", '''
from scipy.optimize import linear_sum_assignment as _lsa
def hungarian_assignment(cost, return_steps=False):
    c = np.asarray(cost.detach().cpu().double().numpy() if isinstance(cost, Tensor) else cost, dtype=np.float64)
    if c.ndim != 2: raise ValueError("`cost` must be 2-D")
    if not np.isfinite(c).all(): raise ValueError("`cost` contains NaN")
    if c.shape[0] > c.shape[1]:
        r, k = _lsa(c.T); return r.astype(np.int64), k.astype(np.int64)
    r, k = _lsa(c)
    return r.astype(np.int64), k.astype(np.int64)
'''),
],
"sigmoid_focal_loss": [
("alpha weights the negatives instead of the positives", '''
_ok = sigmoid_focal_loss
def sigmoid_focal_loss(inputs, targets, num_boxes=None, alpha=0.25, gamma=2.0):
    return _ok(inputs, targets, num_boxes, 1 - alpha if alpha >= 0 else alpha, gamma)
'''),
("(1 - p)^gamma with p the probability of class 1, not of the right answer", '''
def sigmoid_focal_loss(inputs, targets, num_boxes=None, alpha=0.25, gamma=2.0):
    prob = inputs.sigmoid(); ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    loss = ce * (1 - prob) ** gamma
    if alpha >= 0: loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss if num_boxes is None else loss.mean(1).sum() / num_boxes
'''),
("reduced with a plain mean instead of mean(1).sum() / num_boxes", '''
_ok = sigmoid_focal_loss
def sigmoid_focal_loss(inputs, targets, num_boxes=None, alpha=0.25, gamma=2.0):
    loss = _ok(inputs, targets, None, alpha, gamma)
    return loss if num_boxes is None else loss.mean()
'''),
],
"bilinear_sample": [
("the -0.5 pixel offset forgotten", '''
def bilinear_sample(img, loc):
    C, H, W = img.shape
    u, v = loc[..., 0] * W, loc[..., 1] * H
    u0, v0 = u.floor(), v.floor(); fx, fy = u - u0, v - v0
    out = img.new_zeros(*loc.shape[:-1], C)
    for du, dv, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        ui, vi = u0 + du, v0 + dv
        inside = (ui >= 0) & (ui <= W - 1) & (vi >= 0) & (vi <= H - 1)
        out = out + (w * inside)[..., None] * img[:, vi.clamp(0, H - 1).long(), ui.clamp(0, W - 1).long()].movedim(0, -1)
    return out
'''),
("x and y swapped", '''
_ok = bilinear_sample
def bilinear_sample(img, loc):
    return _ok(img, loc.flip(-1))
'''),
("border pixels repeated outside the map instead of zeros", '''
def bilinear_sample(img, loc):
    C, H, W = img.shape
    u, v = loc[..., 0] * W - 0.5, loc[..., 1] * H - 0.5
    u0, v0 = u.floor(), v.floor(); fx, fy = u - u0, v - v0
    out = img.new_zeros(*loc.shape[:-1], C)
    for du, dv, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        ui, vi = u0 + du, v0 + dv
        out = out + w[..., None] * img[:, vi.clamp(0, H - 1).long(), ui.clamp(0, W - 1).long()].movedim(0, -1)
    return out
'''),
],
"ms_deform_attn_core": [
("levels reshaped as (W, H)", '''
def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    N, S, M, D = value.shape; _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = spatial_shape_list(value_spatial_shapes); per = value.split([h * w for h, w in shapes], 1)
    grids = 2 * sampling_locations - 1; samples = []
    for l, (h, w) in enumerate(shapes):
        img = per[l].permute(0, 2, 3, 1).reshape(N * M, D, w, h).transpose(-1, -2)
        grid = grids[:, :, :, l].transpose(1, 2).reshape(N * M, Lq, P, 2)
        samples.append(F.grid_sample(img, grid, mode='bilinear', padding_mode='zeros', align_corners=False))
    s = torch.stack(samples, 3).view(N, M, D, Lq, L, P)
    return torch.einsum('nmdqlp,nqmlp->nqmd', s, attention_weights).reshape(N, Lq, M * D)
'''),
("align_corners=True (the corner-pixel convention)", '''
def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    N, S, M, D = value.shape; _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = spatial_shape_list(value_spatial_shapes); per = value.split([h * w for h, w in shapes], 1)
    grids = 2 * sampling_locations - 1; samples = []
    for l, (h, w) in enumerate(shapes):
        img = per[l].permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        grid = grids[:, :, :, l].transpose(1, 2).reshape(N * M, Lq, P, 2)
        samples.append(F.grid_sample(img, grid, mode='bilinear', padding_mode='zeros', align_corners=True))
    s = torch.stack(samples, 3).view(N, M, D, Lq, L, P)
    return torch.einsum('nmdqlp,nqmlp->nqmd', s, attention_weights).reshape(N, Lq, M * D)
'''),
("locations passed to grid_sample unscaled (in [0, 1], not [-1, 1])", '''
def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    N, S, M, D = value.shape; _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = spatial_shape_list(value_spatial_shapes); per = value.split([h * w for h, w in shapes], 1)
    samples = []
    for l, (h, w) in enumerate(shapes):
        img = per[l].permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        grid = sampling_locations[:, :, :, l].transpose(1, 2).reshape(N * M, Lq, P, 2)
        samples.append(F.grid_sample(img, grid, mode='bilinear', padding_mode='zeros', align_corners=False))
    s = torch.stack(samples, 3).view(N, M, D, Lq, L, P)
    return torch.einsum('nmdqlp,nqmlp->nqmd', s, attention_weights).reshape(N, Lq, M * D)
'''),
("attention weights softmaxed again inside the core", '''
_ok = ms_deform_attn_core_pytorch
def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    N, Lq, M, L, P = attention_weights.shape
    return _ok(value, value_spatial_shapes, sampling_locations, attention_weights.flatten(-2).softmax(-1).view(N, Lq, M, L, P))
'''),
],
# --- lesson 12: Deformable DETR -------------------------------------------------------------------------
"inverse_sigmoid": [
("log instead of logit (log x, not log x / (1 - x))", '''
def inverse_sigmoid(x, eps=1e-5):
    return torch.log(x.clamp(min=eps, max=1))
'''),
("no clamping: 0 and 1 give -inf and +inf", '''
def inverse_sigmoid(x, eps=1e-5):
    return torch.log(x / (1 - x))
'''),
("only x clamped to eps, not 1 - x", '''
def inverse_sigmoid(x, eps=1e-5):
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x))
'''),
("the logit clamped instead of x and 1 - x (NaN outside [0, 1])", '''
def inverse_sigmoid(x, eps=1e-5):
    return torch.log(x / (1 - x)).clamp(math.log(eps), -math.log(eps))
'''),
("`eps` argument ignored (1e-5 hard-coded)", '''
def inverse_sigmoid(x, eps=1e-5):
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=1e-5) / (1 - x).clamp(min=1e-5))
'''),
("values outside [0, 1] not clamped into it first", '''
def inverse_sigmoid(x, eps=1e-5):
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
'''),
],
"get_reference_points": [
("the +0.5 pixel-centre offset forgotten (token corners)", '''
def get_reference_points(spatial_shapes, valid_ratios, device=None):
    points = []
    for lvl, (H, W) in enumerate(torch.as_tensor(spatial_shapes).tolist()):
        ref_y, ref_x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * H)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * W)
        points.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]
'''),
("valid ratios ignored: centres normalised by the padded size on every level", '''
def get_reference_points(spatial_shapes, valid_ratios, device=None):
    points = []
    for H, W in torch.as_tensor(spatial_shapes).tolist():
        ref_y, ref_x = torch.meshgrid((torch.arange(H) + 0.5) / H, (torch.arange(W) + 0.5) / W, indexing="ij")
        points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
    ref = torch.cat(points, 0).float()
    return ref[None, :, None].expand(valid_ratios.shape[0], -1, valid_ratios.shape[1], -1).clone()
'''),
("divided by the valid size but not scaled into each level's padded map", '''
def get_reference_points(spatial_shapes, valid_ratios, device=None):
    points = []
    for lvl, (H, W) in enumerate(torch.as_tensor(spatial_shapes).tolist()):
        ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, H - 0.5, H), torch.linspace(0.5, W - 0.5, W), indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * H)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * W)
        points.append(torch.stack((ref_x, ref_y), -1))
    ref = torch.cat(points, 1)
    return ref[:, :, None].expand(-1, -1, valid_ratios.shape[1], -1).clone()
'''),
("(y, x) instead of (x, y)", '''
_ok = get_reference_points
def get_reference_points(spatial_shapes, valid_ratios, device=None):
    return _ok(spatial_shapes, valid_ratios, device).flip(-1)
'''),
("tokens in column-major order (x before y)", '''
def get_reference_points(spatial_shapes, valid_ratios, device=None):
    points = []
    for lvl, (H, W) in enumerate(torch.as_tensor(spatial_shapes).tolist()):
        ref_x, ref_y = torch.meshgrid(torch.linspace(0.5, W - 0.5, W), torch.linspace(0.5, H - 0.5, H), indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * H)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * W)
        points.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]
'''),
("valid ratios read as (h, w): x divided by the height ratio", '''
_ok = get_reference_points
def get_reference_points(spatial_shapes, valid_ratios, device=None):
    return _ok(spatial_shapes, valid_ratios.flip(-1), device)
'''),
],
# --- lesson 13: RT-DETR ---------------------------------------------------------------------------------
"generate_anchors": [
("the +0.5 offset missing: anchors at the cells' top-left corners", '''
def generate_anchors(spatial_shapes, grid_size=0.05, eps=0.01, dtype=torch.float32, device=None):
    anchors = []
    for lvl, (h, w) in enumerate(_shapes_list(spatial_shapes, "generate_anchors")):
        y, x = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
        cxcy = torch.stack([x, y], -1) / torch.tensor([w, h], dtype=dtype)
        anchors.append(torch.cat([cxcy, torch.full_like(cxcy, grid_size * 2.0 ** lvl)], -1).reshape(1, h * w, 4))
    anchors = torch.cat(anchors, 1)
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    return torch.where(valid, torch.log(anchors / (1 - anchors)), torch.inf), valid
'''),
("log instead of logit", '''
_ok = generate_anchors
def generate_anchors(spatial_shapes, grid_size=0.05, eps=0.01, dtype=torch.float32, device=None):
    a, valid = _ok(spatial_shapes, grid_size, eps, dtype, device)
    return torch.where(valid, torch.log(a.sigmoid()), torch.inf), valid
'''),
("size grows linearly (grid_size * (l + 1)), not doubling per level", '''
def generate_anchors(spatial_shapes, grid_size=0.05, eps=0.01, dtype=torch.float32, device=None):
    anchors = []
    for lvl, (h, w) in enumerate(_shapes_list(spatial_shapes, "generate_anchors")):
        y, x = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
        cxcy = (torch.stack([x, y], -1) + 0.5) / torch.tensor([w, h], dtype=dtype)
        anchors.append(torch.cat([cxcy, torch.full_like(cxcy, grid_size * (lvl + 1))], -1).reshape(1, h * w, 4))
    anchors = torch.cat(anchors, 1)
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    return torch.where(valid, torch.log(anchors / (1 - anchors)), torch.inf), valid
'''),
("x and y swapped", '''
_ok = generate_anchors
def generate_anchors(spatial_shapes, grid_size=0.05, eps=0.01, dtype=torch.float32, device=None):
    a, valid = _ok(spatial_shapes, grid_size, eps, dtype, device)
    return a[..., [1, 0, 2, 3]], valid
'''),
("invalid anchors left finite (0) instead of +inf", '''
_ok = generate_anchors
def generate_anchors(spatial_shapes, grid_size=0.05, eps=0.01, dtype=torch.float32, device=None):
    a, valid = _ok(spatial_shapes, grid_size, eps, dtype, device)
    return torch.where(valid, a, 0.0), valid
'''),
("anchors clamped into (eps, 1 - eps) instead of marked invalid", '''
_ok = generate_anchors
def generate_anchors(spatial_shapes, grid_size=0.05, eps=0.01, dtype=torch.float32, device=None):
    a, _ = _ok(spatial_shapes, grid_size, -1.0, dtype, device)
    a = a.sigmoid().clamp(eps, 1 - eps)
    return torch.log(a / (1 - a)), torch.ones(*a.shape[:2], 1, dtype=torch.bool)
'''),
("validity tested on the centre only, not the size", '''
_ok = generate_anchors
def generate_anchors(spatial_shapes, grid_size=0.05, eps=0.01, dtype=torch.float32, device=None):
    a, _ = _ok(spatial_shapes, grid_size, -1.0, dtype, device)
    c = a[..., :2].sigmoid()
    valid = ((c > eps) & (c < 1 - eps)).all(-1, keepdim=True)
    return torch.where(valid, a, torch.inf), valid
'''),
("valid_mask (1, S) without its last dimension", '''
_ok = generate_anchors
def generate_anchors(spatial_shapes, grid_size=0.05, eps=0.01, dtype=torch.float32, device=None):
    a, valid = _ok(spatial_shapes, grid_size, eps, dtype, device)
    return a, valid[..., 0]
'''),
],
"select_topk": [
("ranked by the sum of the class logits, not their maximum", '''
def select_topk(scores, k, *tensors):
    if scores.ndim != 3 or not 0 < k <= scores.shape[1]: raise ValueError("select_topk: need `scores` (B, S, C) with 0 < k <= S")
    _, ind = torch.topk(scores.sum(-1), k, dim=1)
    return ind, [t.gather(1, ind[..., None].expand(-1, -1, t.shape[-1])) for t in tensors]
'''),
("ranked by the first class only (Deformable DETR's objectness)", '''
def select_topk(scores, k, *tensors):
    if scores.ndim != 3 or not 0 < k <= scores.shape[1]: raise ValueError("select_topk: need `scores` (B, S, C) with 0 < k <= S")
    _, ind = torch.topk(scores[..., 0], k, dim=1)
    return ind, [t.gather(1, ind[..., None].expand(-1, -1, t.shape[-1])) for t in tensors]
'''),
("the k lowest scores", '''
def select_topk(scores, k, *tensors):
    if scores.ndim != 3 or not 0 < k <= scores.shape[1]: raise ValueError("select_topk: need `scores` (B, S, C) with 0 < k <= S")
    _, ind = torch.topk(scores.max(-1).values, k, dim=1, largest=False)
    return ind, [t.gather(1, ind[..., None].expand(-1, -1, t.shape[-1])) for t in tensors]
'''),
("indices sorted by position instead of best first", '''
def select_topk(scores, k, *tensors):
    if scores.ndim != 3 or not 0 < k <= scores.shape[1]: raise ValueError("select_topk: need `scores` (B, S, C) with 0 < k <= S")
    ind = torch.topk(scores.max(-1).values, k, dim=1).indices.sort(1).values
    return ind, [t.gather(1, ind[..., None].expand(-1, -1, t.shape[-1])) for t in tensors]
'''),
("the first image's indices used for every image", '''
def select_topk(scores, k, *tensors):
    if scores.ndim != 3 or not 0 < k <= scores.shape[1]: raise ValueError("select_topk: need `scores` (B, S, C) with 0 < k <= S")
    _, ind = torch.topk(scores.max(-1).values, k, dim=1)
    return ind, [t[:, ind[0]] for t in tensors]
'''),
],
"denoising_attn_mask": [
("matching queries may see the denoising queries", '''
_ok = denoising_attn_mask
def denoising_attn_mask(num_denoising, group_size, num_queries, device=None):
    m = _ok(num_denoising, group_size, num_queries, device)
    m[num_denoising:, :num_denoising] = False
    return m
'''),
("denoising groups may see each other", '''
def denoising_attn_mask(num_denoising, group_size, num_queries, device=None):
    n = num_denoising + num_queries
    m = torch.zeros(n, n, dtype=torch.bool)
    m[num_denoising:, :num_denoising] = True
    return m
'''),
("denoising queries may not see the matching queries", '''
_ok = denoising_attn_mask
def denoising_attn_mask(num_denoising, group_size, num_queries, device=None):
    m = _ok(num_denoising, group_size, num_queries, device)
    m[:num_denoising, num_denoising:] = True
    return m
'''),
("inverted: True where attention is allowed", '''
_ok = denoising_attn_mask
def denoising_attn_mask(num_denoising, group_size, num_queries, device=None):
    return ~_ok(num_denoising, group_size, num_queries, device)
'''),
("group of query i taken as i % group_size", '''
def denoising_attn_mask(num_denoising, group_size, num_queries, device=None):
    n = num_denoising + num_queries
    m = torch.zeros(n, n, dtype=torch.bool)
    m[num_denoising:, :num_denoising] = True
    g = torch.arange(num_denoising) % group_size
    m[:num_denoising, :num_denoising] = g[:, None] != g[None, :]
    return m
'''),
("group size and number of groups confused: i // (num_denoising // group_size)", '''
def denoising_attn_mask(num_denoising, group_size, num_queries, device=None):
    n = num_denoising + num_queries
    m = torch.zeros(n, n, dtype=torch.bool)
    m[num_denoising:, :num_denoising] = True
    g = torch.arange(num_denoising) // (num_denoising // group_size)
    m[:num_denoising, :num_denoising] = g[:, None] != g[None, :]
    return m
'''),
],
}
