"""The _base cache on real files, qemu-img and format_inspector."""

import hashlib
import multiprocessing
import os
import subprocess
import threading

from nova_amiboot import cache as cache_mod
from nova_amiboot import exception
from nova_amiboot.local import store
from tests.functional import base


class CountingStore(store.LocalImageStore):
    """The real store, counting downloads in a file (works across forks)."""

    def download(self, image_id, fileobj):
        with open(os.path.join(self.path, 'downloads'), 'a') as f:
            f.write(image_id + '\n')
        super().download(image_id, fileobj)

    def downloads(self):
        try:
            with open(os.path.join(self.path, 'downloads')) as f:
                return f.read().split()
        except FileNotFoundError:
            return []


def _fetch_in_child(instances, store_path, image_id, conf_kw):
    c = cache_mod.ImageCache(instances, CountingStore(store_path),
                             base.make_conf(**conf_kw))
    c.fetch(image_id)


class TestCache(base.RealToolsTestCase):

    def setUp(self):
        super().setUp()
        self.store = CountingStore(self.store.path)

    def test_fetch_triplet_once(self):
        ami, aki, ari = self.add_triplet()
        c = self.make_cache()
        for meta, fmt in ((ami, 'ami'), (aki, 'aki'), (ari, 'ari')):
            got = c.fetch(meta.id, fmt)
            self.assertEqual(os.path.join(
                self.instances, '_base',
                hashlib.sha1(meta.id.encode()).hexdigest()), got.path)
            self.assertEqual('raw', got.format)
            with open(got.path, 'rb') as f:
                self.assertEqual(meta.os_hash_value,
                                 hashlib.sha512(f.read()).hexdigest())
        c.fetch(ami.id)
        self.assertEqual(3, len(self.store.downloads()))

    def test_progress_reports_bytes(self):
        ami, _aki, _ari = self.add_triplet()
        calls = []
        c = cache_mod.ImageCache(self.instances, self.store, self.conf,
                                 progress=lambda *a: calls.append(a))
        c.fetch(ami.id)
        self.assertEqual(('fetching %s' % ami.id, ami.size, ami.size),
                         calls[-1])
        self.assertEqual(sorted(calls, key=lambda a: a[1]), calls)

    def test_concurrent_spawns_download_once(self):
        ami, _aki, _ari = self.add_triplet()
        ctx = multiprocessing.get_context('fork')
        procs = [ctx.Process(target=_fetch_in_child,
                             args=(self.instances, self.store.path, ami.id,
                                   {})) for _ in range(4)]
        threads = [threading.Thread(target=self.make_cache().fetch,
                                    args=(ami.id,)) for _ in range(3)]
        for p in procs + threads:
            p.start()
        for p in procs + threads:
            p.join(60)
        self.assertEqual([0] * 4, [p.exitcode for p in procs])
        self.assertEqual([ami.id], self.store.downloads())

    def _tamper(self, meta, **changes):
        for k, v in changes.items():
            setattr(meta, k, v)
        self.store.save_meta(meta)

    def test_checksum_mismatch_leaves_nothing(self):
        ami, _aki, _ari = self.add_triplet()
        self._tamper(ami, os_hash_value='0' * 128)
        with self.assertRaises(exception.ImageChecksumMismatch) as cm:
            self.make_cache().fetch(ami.id)
        self.assertIn(ami.id, str(cm.exception))
        self.assertEqual([], self.base_dir_entries())

    def test_md5_only_and_no_checksum(self):
        ami, _aki, _ari = self.add_triplet()
        self._tamper(ami, os_hash_algo=None, os_hash_value=None)
        self.make_cache().fetch(ami.id)
        _ami, aki, _ari = self.add_triplet()
        self._tamper(aki, os_hash_algo=None, os_hash_value=None,
                     checksum='f' * 32)
        self.assertRaises(exception.ImageChecksumMismatch,
                          self.make_cache().fetch, aki.id)
        self._tamper(aki, checksum=None)
        self.assertRaises(exception.ImageDownloadFailed,
                          self.make_cache().fetch, aki.id)
        self.assertEqual(1, len(self.base_dir_entries()))

    def test_size_mismatch(self):
        ami, _aki, _ari = self.add_triplet()
        self._tamper(ami, size=ami.size + 1)
        self.assertRaises(exception.ImageSizeMismatch,
                          self.make_cache().fetch, ami.id)
        self.assertEqual([], self.base_dir_entries())

    def test_missing_image(self):
        with self.assertRaises(exception.ImageNotFound) as cm:
            self.make_cache().fetch('no-such-image')
        self.assertIn('no-such-image', str(cm.exception))

    def _qcow2(self, name, *opts, size='64M', backing=None):
        path = self.scratch(name)
        cmd = ['qemu-img', 'create', '-q', '-f', 'qcow2']
        for o in opts:
            cmd += ['-o', o]
        if backing:
            cmd += ['-F', 'raw', '-b', backing]
        subprocess.run(cmd + [path, size], check=True)
        return path

    def _refused(self, path, disk_format, exc=exception.UnsafeImage,
                 expect=None):
        meta = self.store.add('bad', path, disk_format)
        with self.assertRaises(exc) as cm:
            self.make_cache().fetch(meta.id)
        self.assertIn(meta.id, str(cm.exception))
        if expect:
            self.assertIn(expect, str(cm.exception))
        self.assertEqual([], self.base_dir_entries())

    def test_qcow2_claimed_as_ami_is_refused(self):
        self._refused(self._qcow2('q.qcow2'), 'ami',
                      exception.ImageFormatMismatch, 'qcow2')

    def test_qcow2_kernel_is_refused(self):
        self._refused(self._qcow2('k.qcow2'), 'aki',
                      exception.ImageFormatMismatch, 'qcow2')

    def test_backing_file_is_refused(self):
        self._refused(self._qcow2('b.qcow2', backing='/etc/shadow'),
                      'qcow2', expect='backing')

    def test_data_file_is_refused(self):
        path = self._qcow2('d.qcow2', 'data_file=%s' % self.scratch('data'))
        self._refused(path, 'qcow2', expect='data')

    def test_whole_disk_is_not_an_ami(self):
        disk = self.scratch('whole.img')
        subprocess.run(['truncate', '-s', '8M', disk], check=True)
        subprocess.run(['sfdisk', '-q', disk], input=b'label: gpt\n,,L\n',
                       check=True, capture_output=True)
        self._refused(disk, 'ami', exception.ImageFormatMismatch,
                      'partition table')

    def test_virtual_size_cap(self):
        self.conf.set_override('max_image_virtual_size_gb', 1, 'amiboot')
        self._refused(self._qcow2('big.qcow2', size='2G'), 'qcow2',
                      exception.ImageTooLarge)

    def test_qcow2_ami_becomes_raw_base(self):
        qcow = self.scratch('ami.qcow2')
        subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                        self.testbed['root'], qcow], check=True)
        ami, _aki, _ari = self.add_triplet(root=qcow, root_format='qcow2')
        got = self.make_cache().fetch(ami.id, 'ami')
        info = self.run_cmd('qemu-img', 'info', '-f', 'raw', got.path)
        self.assertIn('file format: raw', info)
        self.run_cmd('qemu-img', 'compare', '-f', 'raw', '-F', 'raw',
                     got.path, self.testbed['root'])

    def test_base_is_reinspected_on_use(self):
        ami, _aki, _ari = self.add_triplet()
        c = self.make_cache()
        # A base from before the checks: a qcow2 where a raw must be.
        self._qcow2(os.path.join('_base', cache_mod.base_name(ami.id)))
        self.assertRaises(exception.ImageFormatMismatch, c.fetch, ami.id)

    def test_base_changed_in_place_is_reinspected(self):
        # A base that passed is not read again until it changes: any
        # change, even one that puts its times back, is inspected again.
        ami, _aki, _ari = self.add_triplet()
        c = self.make_cache()
        path = c.fetch(ami.id).path
        c.fetch(ami.id)
        header = self._qcow2('hdr.qcow2')
        st = os.stat(path)
        with open(header, 'rb') as src, open(path, 'r+b') as dst:
            dst.write(src.read(4096))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.assertRaises(exception.ImageFormatMismatch, c.fetch, ami.id)

    def test_disk_full_leaves_nothing(self):
        small = self.scratch('small')
        os.makedirs(small)
        # Smaller than the AMI's non-zero data (zeros become holes).
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs',
                        small], check=True)
        self.addCleanup(subprocess.run, ['umount', small])
        ami, _aki, _ari = self.add_triplet()
        c = cache_mod.ImageCache(small, self.store, self.conf)
        with self.assertRaises(exception.DiskFull) as cm:
            c.fetch(ami.id)
        self.assertIn(ami.id, str(cm.exception))
        self.assertEqual([], os.listdir(os.path.join(small, '_base')))

    def test_clean_keeps_used_and_young_bases(self):
        ami, aki, ari = self.add_triplet()
        c = self.make_cache()
        used = c.fetch(ami.id).path
        kernel = c.fetch(aki.id).path
        unused = c.fetch(ari.id).path
        inst = self.scratch('inst-1')
        os.makedirs(inst)
        self._qcow2('inst-1/disk', backing=used)
        os.link(kernel, os.path.join(inst, 'kernel'))
        self.assertEqual([], c.clean(min_age=3600))
        listing = {e['path']: e for e in c.list()}
        self.assertEqual([inst], listing[used]['users'])
        self.assertEqual([inst], listing[kernel]['users'])
        self.assertEqual([], listing[unused]['users'])
        self.assertEqual([unused], c.clean(min_age=0))
        self.assertTrue(os.path.exists(used))
        self.assertTrue(os.path.exists(kernel))
