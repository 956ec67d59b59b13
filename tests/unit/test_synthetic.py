from auditmesh.synthetic import Synthetic


def _ids(s: Synthetic, n: int = 2000) -> tuple[set[str], set[str]]:
    events = list(s.events(n))
    return {e["wedding_id"] for e in events if e["wedding_id"]}, {e["user_id"] for e in events}


def test_generators_with_different_seeds_write_disjoint_weddings_and_users() -> None:
    weddings_a, users_a = _ids(Synthetic(weddings=50, seed=1))
    weddings_b, users_b = _ids(Synthetic(weddings=50, seed=2))
    assert weddings_a and users_a
    assert not weddings_a & weddings_b
    assert not users_a & users_b


def test_one_world_shares_weddings_and_users_across_seeds() -> None:
    weddings_a, users_a = _ids(Synthetic(weddings=50, seed=1, world="q"))
    weddings_b, users_b = _ids(Synthetic(weddings=50, seed=2, world="q"))
    assert len(weddings_a & weddings_b) > 25
    assert len(users_a & users_b) > 100
    named = Synthetic(weddings=50, world="q")
    assert named.wedding_id(3) in weddings_a | weddings_b
    assert named.user_id(0, 1) in users_a | users_b
