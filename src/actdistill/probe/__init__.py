"""Graph-structured encapsulation of the teacher (paper Sec. 3.2; docs/design.md "Teacher probing")."""
