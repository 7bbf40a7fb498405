"""Register the one-host cloud's users, services, endpoints and flavors.

Run by tools/cloud with the cloud's own Python (openstacksdk) as the
admin that ``keystone-manage bootstrap`` created. Idempotent: finds before
it creates, so a second ``tools/cloud up`` changes nothing.

    cloud_keystone.py CLOUDS_YAML identity|flavors

Service passwords come from the environment (``<NAME>_PASSWORD``).
"""

import os
import sys

import openstack

ENDPOINTS = {
    # service name: (type, url)
    'glance': ('image', 'http://127.0.0.1:9292'),
    'placement': ('placement', 'http://127.0.0.1:8778'),
    'nova': ('compute', 'http://127.0.0.1:8774/v2.1'),
    'neutron': ('network', 'http://127.0.0.1:9696'),
}
# name: (ram MiB, root GiB, vcpus, id)
FLAVORS = {
    'm1.tiny': (256, 1, 1, '1'),
    'amiboot.2g': (256, 2, 1, '2'),
    'amiboot.3g': (256, 3, 1, '3'),
}


def _find_or(create, find, name, **kw):
    found = find(name, ignore_missing=True)
    return found if found is not None else create(name=name, **kw)


def identity(conn):
    idc = conn.identity
    domain = idc.find_domain('default')
    service_project = _find_or(idc.create_project, idc.find_project,
                               'service', domain_id=domain.id)
    demo_project = _find_or(idc.create_project, idc.find_project,
                            'demo', domain_id=domain.id)
    roles = {name: _find_or(idc.create_role, idc.find_role, name)
             for name in ('admin', 'member', 'service', 'reader')}

    def user(name, password, project, role_names):
        u = idc.find_user(name, ignore_missing=True, domain_id=domain.id)
        if u is None:
            u = idc.create_user(name=name, password=password,
                                domain_id=domain.id,
                                default_project_id=project.id)
        else:
            idc.update_user(u, password=password)
        for role in role_names:
            idc.assign_project_role_to_user(project, u, roles[role])

    for name in ENDPOINTS:
        password = os.environ['%s_PASSWORD' % name.upper()]
        user(name, password, service_project, ['admin', 'service'])
    user('demo', os.environ['DEMO_PASSWORD'], demo_project,
         ['member', 'reader'])

    region = 'RegionOne'
    for name, (stype, url) in ENDPOINTS.items():
        svc = idc.find_service(name, ignore_missing=True)
        if svc is None:
            svc = idc.create_service(name=name, type=stype)
        have = {ep.interface for ep in idc.endpoints(service_id=svc.id)}
        for interface in ('public', 'internal'):
            if interface not in have:
                idc.create_endpoint(service_id=svc.id, interface=interface,
                                    url=url, region_id=region)


def flavors(conn):
    for name, (ram, disk, vcpus, fid) in FLAVORS.items():
        if conn.compute.find_flavor(name, ignore_missing=True) is None:
            conn.compute.create_flavor(name=name, ram=ram, disk=disk,
                                       vcpus=vcpus, id=fid, is_public=True)


def main():
    os.environ['OS_CLIENT_CONFIG_FILE'] = sys.argv[1]
    conn = openstack.connect(cloud='amicloud-admin')
    {'identity': identity, 'flavors': flavors}[sys.argv[2]](conn)


if __name__ == '__main__':
    main()
