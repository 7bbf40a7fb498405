"""The benchmark's picture: size curve and per-step bars (matplotlib).

matplotlib is not a dependency of the project: it is pip-installed into
the running venv the first time a plot is asked for.
"""

import subprocess
import sys

MiB = 1024 ** 2


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        print("bench: installing matplotlib into %s (pip)" % sys.prefix,
              file=sys.stderr)
        subprocess.run([sys.executable, '-m', 'pip', 'install', '-q',
                        'matplotlib'], check=True)
        import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot(result, raw, path, machine):
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    curve = result['size_curve']
    sizes = [row['ami_bytes'] / MiB for row in curve]
    left.plot(sizes, [row['ours_s'] for row in curve], 'o-',
              label='ours (overlay, grown, key)')
    left.plot(sizes, [row['nova_flat_s'] for row in curve], 's-',
              label='nova Flat (copy + extend)')
    if all(row.get('guest_s') for row in curve):
        left.plot(sizes, [row['guest_s'] for row in curve], '^-',
                  label='ours, guest mode (overlay, ramdisk + layer)')
    left.set_xscale('log', base=2)
    left.set_yscale('log')
    left.set_xlabel('AMI size (MiB)')
    left.set_ylabel('seconds per instance (median)')
    left.set_title('Time per instance vs AMI size, %d GiB flavor'
                   % result['flavor_gb'])
    left.grid(True, which='both', alpha=0.3)
    left.legend()

    labels, values, colors = [], [], []
    for step, secs in result['prep_steps_s'].items():
        if step != 'total':
            labels.append('ours: %s' % step)
            values.append(secs)
            colors.append('tab:blue')
    labels.append('ours: total')
    values.append(result['prep_median_s'])
    colors.append('tab:blue')
    if result.get('prep_without_template_median_s'):
        labels.append('ours without grown templates')
        values.append(result['prep_without_template_median_s'])
        colors.append('tab:cyan')
    for step in ('copy', 'extend', 'e2fsck', 'resize2fs',
                 'mount+key+umount'):
        if step in raw['copy']:
            labels.append('copy: %s' % step)
            values.append(sorted(raw['copy'][step])[
                len(raw['copy'][step]) // 2])
            colors.append('tab:gray')
    labels.append('copy: total')
    values.append(result['copy_median_s'])
    colors.append('tab:gray')
    labels.append('nova Flat: total')
    values.append(result['nova_flat_median_s'])
    colors.append('tab:orange')
    labels.append('nova Qcow2 (fs not grown)')
    values.append(result['nova_qcow2_median_s'])
    colors.append('tab:green')
    y = range(len(labels))
    right.barh(list(y), values, color=colors)
    right.set_yticks(list(y))
    right.set_yticklabels(labels, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel('seconds (median)')
    right.set_title('Per step, %d MiB AMI' % (result['ami_bytes'] // MiB))
    for i, v in zip(y, values):
        right.text(v, i, ' %.3f' % v, va='center', fontsize=7)
    fig.suptitle('tools/bench-spawn on %s (load %s)'
                 % (machine, result['load'][0]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
