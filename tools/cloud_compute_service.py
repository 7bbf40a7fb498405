"""Register this host's nova-compute service before its first start.

nova-compute refuses to start as a new service on a hypervisor that already
runs domains it did not create ("My hypervisor has existing instances, but
I appear to be a new service"), and then does not exit. On a libvirtd that
other users' guests share, tools/cloud therefore creates the service row
(in the cell the host is mapped to) and the node identity file
``<state_path>/compute_id`` first. Harmless on a clean host.

    cloud_compute_service.py NOVA_CONF
"""

import os
import sys
import uuid

import nova.conf
from nova import config
from nova import context
from nova import exception
from nova import objects

CONF = nova.conf.CONF


def main():
    config.parse_args(['cloud-compute-service', '--config-file',
                       sys.argv[1]])
    objects.register_all()
    idfile = os.path.join(CONF.state_path, 'compute_id')
    if not os.path.exists(idfile):
        with open(idfile, 'w') as f:
            f.write(str(uuid.uuid4()))
    ctxt = context.get_admin_context()
    cell = [c for c in objects.CellMappingList.get_all(ctxt)
            if not c.is_cell0()][0]
    with context.target_cell(ctxt, cell) as cctxt:
        try:
            found = objects.Service.get_by_host_and_binary(
                cctxt, CONF.host, 'nova-compute')
        except exception.NotFound:
            found = None
        if found is not None:
            return
        service = objects.Service(cctxt, host=CONF.host,
                                  binary='nova-compute', topic='compute')
        service.create()
        print('registered nova-compute on %s in %s' % (CONF.host,
                                                       cell.name))


if __name__ == '__main__':
    main()
