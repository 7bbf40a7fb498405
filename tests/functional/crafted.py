"""Hostile image files built byte by byte (test data, not fixtures of tools).

``qcow2_one_cluster``: a qcow2 whose every L2 entry points at the same data
cluster. A few hundred KiB describe gigabytes of guest data; qemu-img reads
it without complaint (its refcounts are only looked at by ``qemu-img
check``), so a raw conversion writes the whole virtual size.
"""

import struct

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
_ENTRIES = CLUSTER // 8          # 64-bit entries per table cluster
_COPIED = 1 << 63


def qcow2_one_cluster(path, virtual_size, fill=b'\xa5'):
    """Write the qcow2 to ``path``; return its size in bytes.

    Layout (one cluster each): header, refcount table, refcount block, L1
    table, then the L2 tables, then the single data cluster, all of whose
    bytes are ``fill`` (a zero ``fill`` makes an image of zeros that a
    sparse conversion turns into holes).
    """
    guest_clusters = -(-virtual_size // CLUSTER)
    n_l2 = -(-guest_clusters // _ENTRIES)
    l1_off, l2_off = 3 * CLUSTER, 4 * CLUSTER
    data_off = (4 + n_l2) * CLUSTER
    total_clusters = 5 + n_l2
    if total_clusters > CLUSTER // 2:
        raise ValueError("one refcount block is enough for tests only")
    if n_l2 > _ENTRIES:
        raise ValueError("one L1 cluster is enough for tests only")
    # QCOW2 version 2 header (72 bytes), big-endian.
    header = struct.pack('>4sIQIIQIIQQIIQ', b'QFI\xfb', 2, 0, 0,
                         CLUSTER_BITS, virtual_size, 0, n_l2, l1_off,
                         CLUSTER, 1, 0, 0)
    refcount_table = struct.pack('>Q', 2 * CLUSTER)
    refcount_block = struct.pack('>%dH' % total_clusters,
                                 *([1] * total_clusters))
    l1 = struct.pack('>%dQ' % n_l2, *[(l2_off + i * CLUSTER) | _COPIED
                                      for i in range(n_l2)])
    with open(path, 'wb') as f:
        f.truncate(total_clusters * CLUSTER)
        for off, blob in ((0, header), (CLUSTER, refcount_table),
                          (2 * CLUSTER, refcount_block), (l1_off, l1)):
            f.seek(off)
            f.write(blob)
        left = guest_clusters
        for i in range(n_l2):
            count = min(left, _ENTRIES)
            f.seek(l2_off + i * CLUSTER)
            # Not COPIED: the cluster is shared (refcount would be > 1).
            f.write(struct.pack('>Q', data_off) * count)
            left -= count
        f.seek(data_off)
        f.write((fill * CLUSTER)[:CLUSTER])
    return total_clusters * CLUSTER
