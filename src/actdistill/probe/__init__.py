"""Graph-structured encapsulation of the teacher (paper Sec. 3.2; DESIGN.md "Teacher probing")."""
