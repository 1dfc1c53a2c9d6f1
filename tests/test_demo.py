"""detr_edu.demo (lesson 20, the README's main job: a Deformable DETR) on a tiny run: it writes its own figures and lesson 19's
(`viz_*.png`, among them the checkpoint grid of the snapshots it keeps), and stopping for snapshots does not change
the training (the engine resumes exactly)."""
from __future__ import annotations

import pytest
import torch

from detr_edu.data import make_shapes_dataset
from detr_edu.demo import run_shapes_demo, snapshot_epochs_of

TINY = dict(hidden_dim=64, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=6, batch_size=2,
            num_workers=0, epochs=2, max_iters=2, max_size=64, progress=False)


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    make_shapes_dataset(root, n_train=4, n_val=2, seed=0, image_size=(64, 64))
    return root


def test_snapshot_epochs():
    assert snapshot_epochs_of(24) == [1, 6, 12]
    assert snapshot_epochs_of(2) == [1] and snapshot_epochs_of(1) == []
    assert snapshot_epochs_of(10, (0, 3, 3, 10, 12)) == [3]


def test_tiny_demo_writes_lesson_19_figures(shapes, tmp_path):
    res = run_shapes_demo(tmp_path / 'out', data_path=str(shapes), **TINY)
    out = tmp_path / 'out'
    for name in ['loss_curve', 'predictions', 'where_queries_look', 'matching', 'recorded_curves', 'viz_predictions',
                 'viz_sampling_points', 'viz_reference_refinement', 'viz_cost_matrices', 'viz_matched_pairs',
                 'viz_assignments_across_layers', 'viz_loss_curves', 'viz_checkpoint_grid']:
        assert (out / f'{name}.png').read_bytes()[:4] == b'\x89PNG', name
    assert set(res['figures']) >= {'viz_checkpoint_grid', 'viz_sampling_points', 'viz_reference_refinement'}
    assert res['model'].two_stage and res['model'].with_box_refine     # the demo's Deformable DETR, its two fixes on
    run = out / 'shapes_run'
    assert sorted(p.name for p in run.glob('*.pth')) == ['checkpoint.pth', 'checkpoint_0000.pth']
    assert [r['epoch'] for r in res['history']] == [0, 1]
    # the same run without the stop after epoch 1 ends with the same weights
    again = run_shapes_demo(tmp_path / 'again', data_path=str(shapes), snapshot_epochs=(), **TINY)
    assert not list((tmp_path / 'again' / 'shapes_run').glob('checkpoint_*.pth'))
    for (k, a), b in zip(res['model'].state_dict().items(), again['model'].state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_tiny_demo_of_a_detr(shapes, tmp_path):
    """`--set model=detr` (with lesson 10's small CNN): Deformable DETR's options are dropped, and the figures show the
    queries' attention maps instead of sampling points."""
    res = run_shapes_demo(tmp_path / 'out', data_path=str(shapes), snapshot_epochs=(), model='detr',
                          **{**TINY, 'epochs': 1})
    assert (tmp_path / 'out' / 'where_queries_look.png').read_bytes()[:4] == b'\x89PNG'
    assert {'viz_query_attention', 'viz_encoder_attention'} <= set(res['figures'])
    assert type(res['model']).__name__ == 'DETR'
